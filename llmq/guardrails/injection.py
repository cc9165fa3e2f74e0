"""Blocks prompts that try to override the system's instructions (prompt injection)."""

from __future__ import annotations

import re

from .base import Finding, Verdict

_FLAGS = re.IGNORECASE
# Each pattern needs the imperative *and* its target (instructions, system prompt, role), so
# ordinary prose such as "don't ignore the previous quarter" does not match.
PATTERNS: dict[str, re.Pattern[str]] = {
    "ignore_previous": re.compile(
        r"\b(ignore|forget|override|bypass)\s+(all\s+|any\s+|the\s+|your\s+)*"
        r"(previous|prior|above|earlier|preceding|system)\s+(instructions|prompts?|rules|"
        r"directions|guidelines)",
        _FLAGS,
    ),
    "disregard_instructions": re.compile(
        r"\bdisregard\s+(all\s+|any\s+|the\s+|your\s+)*(previous\s+|prior\s+|above\s+)?"
        r"(instructions|system\s+prompt|rules|guidelines)",
        _FLAGS,
    ),
    "reveal_system_prompt": re.compile(
        r"\b(reveal|print|show|output|repeat|display|leak)\s+(me\s+)?(your|the)\s+"
        r"(system|hidden|initial|original)\s+(prompt|instructions)",
        _FLAGS,
    ),
    "jailbreak_persona": re.compile(
        r"\byou\s+are\s+now\s+(dan\b|in\s+developer\s+mode|jailbroken|unrestricted)|"
        r"\b(enable|enter|activate)\s+developer\s+mode\b|\bdo\s+anything\s+now\b",
        _FLAGS,
    ),
    "no_restrictions": re.compile(
        r"\b(act|behave|respond)\s+as\s+.{0,40}\bwithout\s+(any\s+)?(restrictions|filters|"
        r"limitations|guidelines|censorship)",
        _FLAGS,
    ),
    "role_tag_smuggling": re.compile(
        r"<\|im_start\|>\s*system|<\|system\|>|</?system>|\[/?INST\]|<<SYS>>", _FLAGS
    ),
    "new_instructions": re.compile(r"^\s*(new|updated|revised)\s+instructions\s*:", _FLAGS | re.M),
}


class PromptInjectionGuard:
    name = "prompt_injection"

    def check(self, text: str) -> Verdict:
        for rule, pattern in PATTERNS.items():
            if pattern.search(text):
                full = f"{self.name}.{rule}"
                return Verdict(text=text, findings=(Finding(full, "block"),), blocked_by=full)
        return Verdict(text=text)
