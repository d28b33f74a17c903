"""One preference row, in whichever format it comes, as (prompt turns, chosen reply, rejected
reply). The format is recognised from the row itself, as TRL's own data utilities do:

- TRL standard, explicit prompt: ``{"prompt": str, "chosen": str, "rejected": str}``;
- TRL standard, implicit prompt: ``{"chosen": str, "rejected": str}``, both whole texts; the
  prompt is their shared beginning, cut back to a word boundary;
- TRL conversational, explicit prompt: ``prompt`` a list of ``{"role", "content"}`` messages,
  ``chosen`` and ``rejected`` each one assistant message (a list of one);
- TRL conversational, implicit prompt: ``chosen`` and ``rejected`` whole conversations; the
  prompt is the messages they share, the reply the last assistant message;
- HH-RLHF transcripts: ``chosen``/``rejected`` strings of ``"\\n\\nHuman: ...\\n\\nAssistant:
  ..."`` turns sharing every turn but the last reply.

`PreferenceColumns` maps other column names onto prompt, chosen and rejected. Nothing here
reads files; `data.read_preferences` does, and decides what an inconsistent row costs.
"""

from __future__ import annotations

import re
from typing import Any

from sparring_trainer.config import PreferenceColumns
from sparring_trainer.tables import DataError

Message = dict[str, str]
Turns = tuple[Message, ...]
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}
_MESSAGE_ROLES = ("system", "user", "assistant")
FORMATS = (
    "supported preference formats: TRL standard ({prompt, chosen, rejected} strings, or "
    "{chosen, rejected} whole texts), TRL conversational (lists of {role, content} messages, "
    "with or without a prompt) and HH transcripts ('\\n\\nHuman: ...\\n\\nAssistant: ...'); "
    "other column names: preferences.columns {prompt, chosen, rejected}"
)


def parse_hh_transcript(text: str, where: str) -> tuple[Turns, str]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b ..."`` -> (turns before the last reply, last reply).

    Turn contents are stripped of surrounding whitespace; the last reply may be empty.
    """
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: empty transcript")
    parts = _TURN.split(text)
    if parts[0].strip():
        raise DataError(f"{where}: transcript must start with 'Human:', not {parts[0][:40]!r}")
    turns = [
        (_ROLES[role], content.strip())
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if not turns or turns[-1][0] != "assistant":
        raise DataError(f"{where}: transcript does not end with an 'Assistant:' turn")
    prompt = tuple({"role": role, "content": content} for role, content in turns[:-1])
    if not any(m["role"] == "user" for m in prompt):
        raise DataError(f"{where}: transcript has no 'Human:' turn before the last reply")
    if turns[0][0] != "user":
        raise DataError(f"{where}: transcript must start with a 'Human:' turn")
    return prompt, turns[-1][1]


def _is_hh(text: str) -> bool:
    return text.lstrip().startswith(("Human:", "Assistant:"))


def _messages(value: Any, where: str) -> Turns:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: must be a non-empty list of {{role, content}} messages")
    out = []
    for i, message in enumerate(value):
        ok = isinstance(message, dict) and message.get("role") in _MESSAGE_ROLES
        if not ok or not isinstance(message.get("content"), str):
            raise DataError(
                f"{where}[{i}]: expected a message {{role: system|user|assistant, "
                f"content: string}}, got {str(message)[:80]}"
            )
        out.append({"role": message["role"], "content": message["content"].strip()})
    return tuple(out)


def _reply(messages: Turns, where: str) -> str:
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise DataError(f"{where}: must be one assistant message, the reply to the prompt")
    return messages[0]["content"]


def _shared_prefix(chosen: str, rejected: str) -> int:
    """Where the shared beginning of two texts ends, cut back to the last whitespace so that
    no word is split between prompt and reply."""
    n = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        n += 1
    if chosen != rejected:
        while n > 0 and not chosen[n - 1].isspace():
            n -= 1
    return n


def _mapped(row: dict[str, Any], columns: PreferenceColumns | None, where: str) -> dict[str, Any]:
    if columns is None:
        return row
    out = {}
    for field in ("prompt", "chosen", "rejected"):
        name = getattr(columns, field)
        if name is None:
            continue
        if name not in row:
            raise DataError(
                f"{where}: no column {name!r} (preferences.columns.{field}); columns: {sorted(row)}"
            )
        out[field] = row[name]
    return out


def preference_row(
    row: dict[str, Any], where: str, columns: PreferenceColumns | None = None
) -> tuple[Turns, Turns, str, str]:
    """(chosen's prompt, rejected's prompt, chosen reply, rejected reply): the caller checks
    that the prompts agree and the replies differ. DataError names `where` and the field."""
    row = _mapped(row, columns, where)
    if "chosen" not in row or "rejected" not in row:
        missing = [f for f in ("chosen", "rejected") if f not in row]
        raise DataError(f"{where}: missing key {missing[0]!r} (columns: {sorted(row)}); {FORMATS}")
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    if isinstance(chosen, str) and not isinstance(rejected, str):
        raise DataError(f"{where}: 'rejected' must be a string, as 'chosen' is")
    if isinstance(chosen, list) and not isinstance(rejected, list):
        raise DataError(f"{where}: 'rejected' must be a list of messages, as 'chosen' is")
    if isinstance(chosen, str) and isinstance(rejected, str):
        if prompt is None and (_is_hh(chosen) or _is_hh(rejected)):
            p1, c = parse_hh_transcript(chosen, f"{where}: 'chosen'")
            p2, r = parse_hh_transcript(rejected, f"{where}: 'rejected'")
            return p1, p2, c, r
        if prompt is None:  # implicit prompt: the texts' shared beginning
            cut = _shared_prefix(chosen, rejected)
            if not chosen[:cut].strip():
                raise DataError(
                    f"{where}: 'chosen' and 'rejected' share no beginning to serve as the "
                    f"prompt; give a 'prompt' column. {FORMATS}"
                )
            turns: Turns = ({"role": "user", "content": chosen[:cut].strip()},)
            return turns, turns, chosen[cut:].strip(), rejected[cut:].strip()
        if not isinstance(prompt, str):
            raise DataError(f"{where}: 'prompt' must be a string like 'chosen' and 'rejected'")
        if not prompt.strip():
            raise DataError(f"{where}: 'prompt' is empty")
        turns = ({"role": "user", "content": prompt.strip()},)
        return turns, turns, chosen.strip(), rejected.strip()
    if isinstance(chosen, list) and isinstance(rejected, list):
        whole_c = _messages(chosen, f"{where}: 'chosen'")
        whole_r = _messages(rejected, f"{where}: 'rejected'")
        if prompt is not None:
            asked = _messages(prompt, f"{where}: 'prompt'")
            if asked[-1]["role"] == "assistant":
                raise DataError(f"{where}: 'prompt' must end with a user message")
            c = _reply(whole_c, f"{where}: 'chosen'")
            r = _reply(whole_r, f"{where}: 'rejected'")
            return asked, asked, c, r
        for side, whole in (("chosen", whole_c), ("rejected", whole_r)):
            if whole[-1]["role"] != "assistant" or len(whole) < 2:
                raise DataError(
                    f"{where}: '{side}' must be a conversation ending with the assistant's reply"
                )
        return whole_c[:-1], whole_r[:-1], whole_c[-1]["content"], whole_r[-1]["content"]
    kinds = f"'chosen' is {type(chosen).__name__}, 'rejected' is {type(rejected).__name__}"
    raise DataError(f"{where}: not a preference row ({kinds}); {FORMATS}")
