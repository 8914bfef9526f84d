"""Text side of a query: prompt and answer token ids, and turning generated ids back into text.

Answers carry one ``{seg}`` placeholder after each target phrase (the MUSE convention); it is
replaced by the codebook block string.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from .errors import InputError
from .llm import IMAGE_TOKEN

_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_LEADING_GLUE = re.compile(r"^(?:[\s,;:.]|and\b|or\b)+", re.IGNORECASE)


@dataclass
class PromptFormatter:
    """Formats prompts/answers for one tokenizer.

    Args:
        tokenizer: the LLM tokenizer (codebook tokens already added).
        template: prompt with ``{image}`` and ``{question}`` fields.
        num_image_tokens: P, the number of <image> tokens replaced by image features.
        block: the codebook block string (all L*N tokens).
        max_length: context budget for prompt + answer (image tokens included).
    """

    tokenizer: PreTrainedTokenizerBase
    template: str
    num_image_tokens: int
    block: str
    max_length: int
    # Text -> ids, kept for the first MEMO_SIZE texts: training encodes every question and
    # answer once to pack conversations and again for every epoch's items, and tokenizing is a
    # sizeable share of loading an item. The tokenizer must not change afterwards.
    _memo: dict[str, tuple[int, ...]] = field(default_factory=dict, init=False, repr=False, compare=False)

    MEMO_SIZE = 1 << 17

    def _ids(self, text: str) -> list[int]:
        """``text``'s token ids (no special tokens); a new list on every call."""
        ids = self._memo.get(text)
        if ids is None:
            ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(self._memo) < self.MEMO_SIZE:
                self._memo[text] = ids
        return list(ids)

    def prompt_ids(self, question: str, *, reserve: int = 0) -> list[int]:
        """BOS + template(question) ids; ``reserve`` tokens must remain for the answer.

        Raises:
            InputError: empty question, or prompt + reserve longer than ``max_length``.
        """
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"the question is empty: {question!r}")
        text = self.template.format(image=IMAGE_TOKEN * self.num_image_tokens, question=question.strip())
        ids = [self.tokenizer.bos_token_id, *self._ids(text)]
        if len(ids) + reserve > self.max_length:
            limit = self.max_length - reserve - (len(ids) - len(self._ids(question.strip())))
            raise InputError(
                f"the question is too long: {len(self._ids(question.strip()))} tokens, but at most "
                f"{max(limit, 0)} fit (context {self.max_length} tokens, of which "
                f"{self.num_image_tokens} image tokens and {reserve} reserved for the answer)")
        return ids

    def answer_ids(self, answer: str) -> list[int]:
        """Answer ids with each ``{seg}`` replaced by a codebook block, then EOS."""
        return [*self._ids(answer.replace("{seg}", f" {self.block} ")), self.tokenizer.eos_token_id]

    def training_pair(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        """(input_ids, labels) for teacher forcing; labels are -100 on the prompt.

        Raises:
            InputError: as :meth:`prompt_ids`, if prompt + answer exceed ``max_length``.
        """
        ans = self.answer_ids(answer)
        prompt = self.prompt_ids(question, reserve=len(ans))
        return prompt + ans, [-100] * len(prompt) + ans

    def followup_ids(self, question: str) -> list[int]:
        """A later turn's prompt: the template without the image (and without BOS).

        Raises:
            InputError: empty question.
        """
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"the question is empty: {question!r}")
        return self._ids(self.template.format(image="", question=question.strip()).strip())

    def conversation(self, turns: Sequence[tuple[str, str]]) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of a multi-turn conversation about one image (LLaVA-style).

        The first turn is :meth:`training_pair`; each later turn appends :meth:`followup_ids`
        and its answer. Labels are -100 on every prompt; the codebook blocks of all turns
        appear in turn order, so their masks are the turns' masks concatenated.

        Raises:
            InputError: no turn, an empty question, or more than ``max_length`` tokens in all.
        """
        if not turns:
            raise InputError("a conversation needs at least one (question, answer) turn")
        ids, labels = self.training_pair(*turns[0])
        for question, answer in turns[1:]:
            prompt, ans = self.followup_ids(question), self.answer_ids(answer)
            ids, labels = ids + prompt + ans, labels + [-100] * len(prompt) + ans
        if len(ids) > self.max_length:
            raise InputError(f"the conversation has {len(ids)} tokens, more than the context "
                             f"of {self.max_length} ({len(turns)} turns)")
        return ids, labels

    def clean(self, ids: list[int]) -> str:
        """Decode ids to readable text (special tokens dropped, no space before punctuation)."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.split()))

    def split_answer(self, tokens: list[int], starts: list[int], block_len: int) -> tuple[str, list[str]]:
        """Readable answer and the phrase before each complete block.

        Args:
            tokens: generated ids (no EOS). starts: first position of each complete block.
        Returns:
            (answer text without codebook tokens, phrases in block order).
        """
        phrases, prev = [], 0
        for s in starts:
            seg = self.clean(tokens[prev:s])
            phrases.append(_LEADING_GLUE.sub("", seg).strip(" ,.;:"))
            prev = s + block_len
        return self.clean(tokens), phrases
