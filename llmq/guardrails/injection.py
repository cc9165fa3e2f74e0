"""Blocks prompts that try to override the system's instructions (prompt injection).

Every pattern needs both the imperative *and* its target (instructions, system prompt, a
jailbreak persona, a chat-role tag), because the documents users send are full of ordinary
words like "ignore", "previous", "system" and "prompt". Text is NFKC-normalised and stripped of
zero-width characters before matching, so full-width letters and invisible joiners do not hide a
payload; the text passed on is never altered.
"""

from __future__ import annotations

import re
import unicodedata

from .base import Finding, Verdict

_FLAGS = re.IGNORECASE
_ZERO_WIDTH = re.compile("[\u00ad\u200b-\u200f\u2060-\u2064\ufeff]")

# "Don't ignore the previous instructions" is advice, not an attack.
_NOT_NEGATED = r"(?<!n't\s)(?<!not\s)(?<!never\s)"
# "Mac users can ignore the above instructions" is an install guide, not an attack.
_NOT_PERMISSIVE = r"(?<!can\s)(?<!may\s)"
_EARLIER = r"(?:previous|prior|above|earlier|preceding|foregoing|original|initial)"
_DIRECTIVES = (
    r"(?:instructions?|prompts?|rules|directions|directives|guidelines|commands|orders"
    r"|context|programming|guidance|messages)"
)
# Follow-ups that show the writer means their own earlier message, or a conditional aside:
# "ignore the previous instructions I sent", "... in my last email", "... if you are on Linux".
_NOT_ASIDE = (
    r"(?!\s+(?:that\s+)?(?:i|we)\s+(?:sent|gave|shared|emailed|posted|wrote|mentioned)\b"
    r"|\s+(?:in|from)\s+(?:my|our)\s+(?:last|earlier|previous|prior)\s+(?:e-?mail|message|memo"
    r"|note|letter|post)\b|\s*,?\s+(?:if|unless|when)\b)"
)
_JAILBREAK_STATE = (
    r"(?:in\s+)?(?:developer|jailbreak|god|dan|unrestricted|unfiltered)\s+mode"
    r"|jailbroken|unrestricted|unfiltered|uncensored|unchained|(?-i:DAN)\b(?!['\u2019])"
)


def _any(*alternatives: str) -> str:
    return "|".join(f"(?:{a})" for a in alternatives)


def _override_earlier(verbs: str) -> str:
    """`verbs` aimed at earlier instructions or at the system prompt."""
    verb = _NOT_NEGATED + rf"\b(?:{verbs})\s+"
    return _any(
        # "ignore all previous instructions", "forget any of the above rules": sweeping.
        verb + r"(?:all|any|every|each)\s+(?:of\s+)?(?:the\s+|your\s+|my\s+|these\s+"
        r"|those\s+)?" + _EARLIER + r"\s+" + _DIRECTIVES + r"\b",
        # "ignore the previous instructions": the narrow form, minus asides (see _NOT_ASIDE).
        _NOT_PERMISSIVE
        + verb
        + r"(?:the\s+|these\s+|those\s+|my\s+|your\s+)?"
        + _EARLIER
        + r"\s+(?:(?:instructions?|prompts?|directives)\b"
        # "forget the prior rules" is an attack; "the previous rules of the game" is a memo.
        + r"|(?:rules|guidelines|commands)\b(?!\s+(?:of|for|about|on|regarding|governing|in)\b))"
        + _NOT_ASIDE,
        # "ignore the system prompt" (the plural "users ignore system prompts" is UX prose).
        verb + r"(?:the|your|all|any)\s+(?:previous\s+|prior\s+)?system\s+(?:prompt|instructions"
        r"|message)\b(?!s)",
        # "forget everything you were told", "ignore all that was said above".
        verb + r"(?:everything|all)\s+(?:that\s+)?(?:you\s+(?:were|have\s+been|'ve\s+been)\s+"
        r"(?:told|given|instructed)|(?:was\s+)?(?:said|written|stated)\s+(?:above|before"
        r"|earlier))",
    )


PATTERNS: dict[str, re.Pattern[str]] = {
    "ignore_previous": re.compile(
        _override_earlier("ignore|forget|bypass|override|overrule"), _FLAGS
    ),
    "disregard_instructions": re.compile(
        _any(
            _override_earlier("disregard"),
            # "disregard your instructions", "disregard all rules"; but "disregard the
            # instructions on the label" and "disregard safety rules" are ordinary prose.
            _NOT_NEGATED + r"\bdisregard\s+(?:all\s+(?:of\s+)?(?:the\s+|your\s+)?|your\s+)"
            r"(?:own\s+)?(?:instructions|system\s+prompt|prompts?|directives|programming"
            r"|guidelines|rules|safety\s+(?:rules|guidelines))\b",
        ),
        _FLAGS,
    ),
    "override_your_rules": re.compile(
        _NOT_NEGATED + r"\b(?:ignore|forget|bypass|override|circumvent|evade)\s+"
        r"(?:all\s+|any\s+)?(?:of\s+)?your\s+(?:own\s+)?(?:instructions|programming"
        r"|system\s+prompt|guidelines|restrictions|(?:safety|ethical|content)\s+(?:rules"
        r"|guidelines|filters?|training|measures|policy|policies))\b",
        _FLAGS,
    ),
    "reveal_system_prompt": re.compile(
        r"\b(?:reveal|print|show|output|repeat|display|leak|dump|recite|disclose|expose|give|tell)"
        r"\s+(?:me\s+|us\s+)?(?:all\s+)?(?:of\s+)?"
        r"(?:your\s+(?:system|hidden|secret|initial|original|internal|full)"
        r"|the\s+(?:hidden|secret)\s+(?:system\s+)?)"
        r"\s*(?:prompt|instructions|message|rules)\b"
        r"|\bwhat\s+(?:is|are|was|were)\s+your\s+(?:system\s+prompt|(?:initial|original|hidden"
        r"|secret|system)\s+instructions)\b"
        r"|\b(?:repeat|print|output)\s+(?:all\s+)?(?:of\s+)?(?:the\s+)?(?:words|text|everything)"
        r"\s+above\s+(?:starting|beginning)\s+with\b",
        _FLAGS,
    ),
    "jailbreak_persona": re.compile(
        r"\byou(?:'re|\u2019re|\s+are)\s+(?:now\s+|going\s+to\s+(?:be|act\s+as)\s+)"
        r"(?:an?\s+)?(?:" + _JAILBREAK_STATE + r")"
        r"|\b(?:act|pretend|roleplay|role-play)\s+(?:to\s+be\s+|as\s+)(?:an?\s+)?(?-i:DAN)\b"
        r"|\b(?:enable|enter|activate|switch\s+(?:in)?to)\s+(?:the\s+)?(?:jailbreak|god|"
        r"(?-i:DAN)|unrestricted|unfiltered)\s+mode\b"
        r"|(?-i:DAN)\W{1,5}do\s+anything\s+now\b|\bdo\s+anything\s+now\W{1,5}(?-i:DAN)\b",
        _FLAGS,
    ),
    "no_restrictions": re.compile(
        r"\b(?:act|behave|respond|answer|reply|operate|roleplay|role-play)\s+(?:as|like)\b"
        r"[^.\n]{0,60}?\bwithout\s+(?:any\s+)?(?:ethical\s+|moral\s+|content\s+|safety\s+)?"
        r"(?:restrictions|filters|filtering|limitations|censorship|guardrails|safeguards|rules"
        r"|guidelines|ethics|morals)\b"
        r"|\bpretend\s+(?:that\s+)?you\s+(?:have|are\s+under|are\s+bound\s+by)\s+no\s+"
        r"(?:restrictions|filters|rules|guidelines|limitations|guardrails)\b"
        r"|\byou(?:'re|\u2019re|\s+are)\s+(?:not|no\s+longer|never)\s+(?:bound|restricted|limited"
        r"|constrained)\s+by\s+(?:any\s+|your\s+|the\s+)?(?:(?:openai|anthropic|content|safety"
        r"|ethical|usage)\s+){1,2}(?:rules|policies|guidelines|filters|restrictions)\b",
        _FLAGS,
    ),
    "role_tag_smuggling": re.compile(
        r"<\|im_start\|>\s*(?:system|assistant)\b|<\|im_end\|>|<\|(?:system|endoftext)\|>"
        r"|<\|start_header_id\|>\s*system|</?system>|\[/?INST\]|<</?SYS>>",
        _FLAGS,
    ),
    "new_instructions": re.compile(
        r"^[ \t>*#-]*(?:new|real|actual|true|updated\s+system|new\s+system)\s+(?:system\s+)?"
        r"(?:instructions|prompt|directives)\s*:",
        _FLAGS | re.MULTILINE,
    ),
}


# Rules run only when one of their trigger words occurs: a substring test is far cheaper than
# the rule regex on long documents. Each alternative of a rule contains one of its triggers
# literally; after _normalize, re.IGNORECASE equates an ASCII letter only with its two cases, so
# the lower-cased probe contains the trigger whenever the rule could match.
TRIGGERS: dict[str, tuple[str, ...]] = {
    "ignore_previous": ("ignore", "forget", "bypass", "override", "overrule"),
    "disregard_instructions": ("disregard",),
    "override_your_rules": ("ignore", "forget", "bypass", "override", "circumvent", "evade"),
    "reveal_system_prompt": ("your", "hidden", "secret", "above"),
    "jailbreak_persona": ("you", "dan", "mode"),
    "no_restrictions": ("without", "pretend", "you"),
    "role_tag_smuggling": ("<|", "system>", "inst]", "sys>>"),
    "new_instructions": ("instructions", "prompt", "directives"),
}
# NFKC already maps the long s and the Kelvin sign; these two are the other letters that
# re.IGNORECASE matches to ASCII ones (a dotless or dotted capital i matches "i").
_DOTTED_I = str.maketrans({"\u0130": "i", "\u0131": "i"})


def _normalize(text: str) -> str:
    return _ZERO_WIDTH.sub("", unicodedata.normalize("NFKC", text)).translate(_DOTTED_I)


class PromptInjectionGuard:
    name = "prompt_injection"

    def check(self, text: str) -> Verdict:
        probe = _normalize(text)
        lowered = probe.lower()
        for rule, pattern in PATTERNS.items():
            if any(t in lowered for t in TRIGGERS[rule]) and pattern.search(probe):
                full = f"{self.name}.{rule}"
                return Verdict(text=text, findings=(Finding(full, "block"),), blocked_by=full)
        return Verdict(text=text)
