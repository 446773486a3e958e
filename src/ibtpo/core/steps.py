"""Reasoning steps on token ids (METHOD.md section 2): where a completion splits into steps.

A step is the text up to and including the delimiter (default a blank line, "\\n\\n"); the last step ends at EOS or
the length cap. We never re-tokenise text: each token id is decoded once (cached) and a step ends after the token in
which a delimiter *ends*. With a tokenizer that fuses the delimiter with the next word (one token "\\n\\nThe"), the
step ends after that token; at token granularity there is no finer cut.

Steps shorter than ``min_step_tokens`` are merged into the previous step (the first step, having no previous one,
into the next): a lone "\\n\\n" or a one-token line does not become a branching point of its own.
"""

from __future__ import annotations


class StepSplitter:
    """Finds step boundaries in token-id sequences for one tokenizer."""

    def __init__(self, tokenizer, delimiter: str = "\n\n", min_step_tokens: int = 3):
        if not delimiter:
            raise ValueError("the step delimiter must be a non-empty string")
        self.tokenizer = tokenizer
        self.delimiter = delimiter
        self.min_step_tokens = max(1, int(min_step_tokens))
        self._text: dict[int, str] = {}

    def token_text(self, token_id: int) -> str:
        text = self._text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            self._text[token_id] = text
        return text

    def _ends_step(self, tail: str, token_id: int) -> tuple[bool, str]:
        """Does a delimiter end inside this token, given the text `tail` just before it? Returns (ends, new tail)."""
        text = self.token_text(token_id)
        joined = tail + text
        d = self.delimiter
        i = joined.find(d)
        ends = False
        while i != -1:
            if i + len(d) > len(tail):  # the occurrence ends inside this token
                ends = True
                break
            i = joined.find(d, i + 1)
        keep = len(d) - 1
        return ends, (joined[-keep:] if keep else "")

    def raw_boundaries(self, ids: list[int], start: int = 0) -> list[int]:
        """Exclusive end offsets of the delimiter-terminated steps of ``ids[start:]`` (no merging), plus len(ids)."""
        tail = ""
        ends = []
        # scan a little context before `start` so a delimiter straddling the fork is seen as it would be in one pass
        for pos in range(max(0, start - 2 * len(self.delimiter)), len(ids)):
            ends_here, tail = self._ends_step(tail, ids[pos])
            if ends_here:
                if pos + 1 > start:
                    ends.append(pos + 1)
                tail = ""  # occurrences do not overlap across a boundary ("\n\n\n" ends one step)
        if not ends or ends[-1] != len(ids):
            ends.append(len(ids))
        return ends

    def boundaries(self, ids: list[int], start: int = 0) -> list[int]:
        """Exclusive end offsets of the steps covering ``ids[start:]`` after short-step merging; last == len(ids).

        ``start`` is where a continuation begins (a fork point): the text before it is only context for finding a
        delimiter that straddles the fork. Empty input (start == len(ids)) gives [].
        """
        if start >= len(ids):
            return []
        ends = self.raw_boundaries(ids, start)
        pieces = []  # (begin, end)
        begin = start
        for end in ends:
            pieces.append([begin, end])
            begin = end
        merged: list[list[int]] = []
        for piece in pieces:
            if merged and piece[1] - piece[0] < self.min_step_tokens:
                merged[-1][1] = piece[1]  # too short: glue onto the previous step
            else:
                merged.append(piece)
        if len(merged) > 1 and merged[0][1] - merged[0][0] < self.min_step_tokens:
            merged[1][0] = merged[0][0]  # a short first step joins the next one
            merged.pop(0)
        return [end for _, end in merged]

    def split(self, ids: list[int], start: int = 0) -> list[list[int]]:
        """The token lists of the steps of ``ids[start:]`` (see :meth:`boundaries`)."""
        out, begin = [], start
        for end in self.boundaries(ids, start):
            out.append(ids[begin:end])
            begin = end
        return out
