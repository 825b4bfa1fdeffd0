"""PII scrubbing: one org-wide policy, Sentry-compatible, stricter than Sentry by default.

    cfg = ScrubbingConfig(...)                      # relay.config.scrubbing
    problems = validate_scrubbing(cfg)              # paths relative to the section
    problems += validate_scrubbing_override(org, project)
    scrubber = compile_scrubber(org, project)       # once per policy revision
    report = scrubber.scrub_envelope(envelope)      # every item + header, in place
    redactions = scrubber.scrub_event(event_dict)   # a parsed event, in place
    scrubber.scrub_event(event_dict, "event", report=False)    # same, no redaction list
    scrubber.scrub_envelope(envelope, skip=done, report=False)  # (the ingest path)
    text = scrubber.scrub_text("free text")         # value detectors only

Modules: `detectors` (value regexes, Luhn, IBAN), `selectors` (Sentry selector
grammar), `rules` (PII-config rules, built-ins, redaction methods), `schema` (value
types and PII attribute per field), `walker` (one pass over a payload), `cache`
(detector results per string, per compiled policy), `items` (per item type),
`content` (text or binary, by the bytes), `native` (sentry-native's MessagePack),
`replay` (recordings and mobile replay videos), `deep` (JSON deeper than the walker
goes, in pieces), `scrubber` (merge and compile), `validation`.
"""

from __future__ import annotations

from relay.processing.scrub.scrubber import (
    DroppedItem,
    Scrubber,
    ScrubReport,
    compile_scrubber,
)
from relay.processing.scrub.validation import validate_scrubbing, validate_scrubbing_override
from relay.processing.scrub.walker import Redaction

__all__ = [
    "DroppedItem",
    "Redaction",
    "ScrubReport",
    "Scrubber",
    "compile_scrubber",
    "validate_scrubbing",
    "validate_scrubbing_override",
]
