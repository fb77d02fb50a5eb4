"""The reasoning format: what a rationale looks like, how it is checked, how it is put after a prompt.

A candidate rationale is a teacher's reply in the form

    <think>REASONING</think><answer>SUMMARY</answer>

Appended to an embedding prompt (which ends with `<disc_emb>`), it becomes a *completion*:

    think completion:     <think>REASONING</think><answer>SUMMARY</answer><gen_emb>
    no-think completion:  <no_think><gen_emb>
    empty completion:     <think></think><answer></answer><gen_emb>     (diagnostics only)

and the gen embedding is the last-layer state at that final `<gen_emb>`. Teacher prompts live here too, so
every teacher (local model, HTTP server, imported file) asks for the same thing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import TokensConfig
from ..types import Sample

MAX_THINK_CHARS = 2000  # longer reasoning is refused as malformed (a runaway teacher)
MAX_ANSWER_CHARS = 400

TEACHER_SYSTEM = (
    "You help a search engine. Think briefly about what the input shows and what it is about, then name "
    "it. Reply exactly as <think>one or two sentences</think><answer>a short phrase</answer>."
)
# A small local teacher gets the format from its decoder (teachers.LocalTeacher), not from the prompt: a
# 135M model asked for tags copies the instruction instead of following it.
LOCAL_TEACHER_SYSTEM = "Say in one sentence what the input shows and what it is about."


def teacher_user_text(query: Sample, hint: str = "") -> str:
    """The user turn a teacher sees (media travel separately): instruction, text, and the privileged hint.

    The hint is text about the query item that the embedding model will never see (e.g. the clip art's
    title and keywords); it stands in for a stronger teacher's eyes. It never contains the target."""
    parts = [p for p in (query.instruction, query.text) if p]
    if hint:
        parts.append(f"Facts about it: {hint}")
    return "\n".join(parts)


@dataclass(frozen=True)
class Parsed:
    think: str
    answer: str
    problem: str = ""  # "" when the rationale is well-formed

    @property
    def valid(self) -> bool:
        return not self.problem


_PATTERN = re.compile(r"^\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$", re.DOTALL)


def parse_rationale(text: str, tokens: TokensConfig | None = None) -> Parsed:
    """Split a teacher reply into (think, answer) or say what is wrong with it.

    >>> parse_rationale("<think>A red fruit.</think><answer>apple</answer>")
    Parsed(think='A red fruit.', answer='apple', problem='')
    >>> parse_rationale("apple").problem
    'no <think>...</think><answer>...</answer> structure'
    """
    tokens = tokens or TokensConfig()
    m = _PATTERN.match(text or "")
    if not m:
        return Parsed("", "", "no <think>...</think><answer>...</answer> structure")
    think, answer = m.group(1).strip(), m.group(2).strip()
    if not think:
        return Parsed(think, answer, "empty <think>")
    if not answer:
        return Parsed(think, answer, "empty <answer>")
    if len(think) > MAX_THINK_CHARS or len(answer) > MAX_ANSWER_CHARS:
        return Parsed(think, answer, f"too long (think {len(think)} chars, answer {len(answer)} chars)")
    for tok in tokens.all():
        if tok in think or tok in answer:
            return Parsed(think, answer, f"contains the reserved token {tok}")
    return Parsed(think, answer)


def think_completion(think: str, answer: str, tokens: TokensConfig) -> str:
    t = tokens
    return f"{t.think_open}{think}{t.think_close}{t.answer_open}{answer}{t.answer_close}{t.gen_emb}"


def no_think_completion(tokens: TokensConfig) -> str:
    return f"{tokens.no_think}{tokens.gen_emb}"


def empty_completion(tokens: TokensConfig) -> str:
    return think_completion("", "", tokens)
