"""A small byte-level BPE tokenizer trained locally, with a chat template that renders image parts.

Tiny offline models need a tokenizer without a hub download: this one trains in milliseconds on a
built-in English question/answer corpus (byte-level, so any text still encodes) and carries the
special tokens and the chat template of the model family that uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"

# Words of the benchmark world's questions and answers (colours, shapes, counts, sides, scans, charts),
# so that common answers are one or two tokens; anything else falls back to bytes.
_WORDS = """
red green blue yellow purple orange pink brown black white grey gray cyan magenta
circle square triangle star rectangle ellipse diamond cross hexagon shape shapes object objects
zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 10
left right top bottom middle center centre upper lower side both neither none
lesion lesions scan scans tissue organ region spot spots bright dark mass normal abnormal
bar bars chart graph tallest shortest taller shorter highest lowest largest smallest value
first second third fourth last compare comparison more less than equal same different
yes no true false maybe
user assistant system question answer image picture
""".split()

_SENTENCES = (
    "The answer is {w}.",
    "Answer: {w}",
    "Finding: {w}.",
    "Finding: {w} lesion on the left side.",
    "What colour is the {w}?",
    "What color is the shape?",
    "Which shape is shown in the image?",
    "How many {w} are there?",
    "How many lesions are visible in the scan?",
    "On which side is the lesion, left or right?",
    "Which bar is the tallest?",
    "Is the first bar taller than the second bar?",
    "The image shows a {w}.",
    "There are {w} objects in the picture.",
    "It is {w}.",
    "Look at the image and answer the question with one word.",
    "The {w} one is on the right.",
)


def corpus() -> list[str]:
    """The built-in training text: every word in every sentence frame, plus the words alone."""
    lines = [frame.format(w=w) for frame in _SENTENCES for w in _WORDS]
    lines.extend(_WORDS)
    lines.extend(w.capitalize() for w in _WORDS)
    return lines


def train_bpe(special_tokens: Sequence[str], vocab_size: int = 1024) -> Tokenizer:
    """Train a byte-level BPE on :func:`corpus`; ``special_tokens`` get the first ids, in order."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok


def chat_template(image_placeholder: str) -> str:
    """A ChatML Jinja template; ``content`` is a string or a list of image/text parts.

    Image parts (``{"type": "image", ...}``, any other keys ignored) render as ``image_placeholder``;
    the processor expands it to the model's image tokens. ``add_generation_prompt`` opens the
    assistant turn, so a rendered prompt is always a prefix of the rendered prompt plus answer.
    """
    return (
        "{%- for message in messages -%}"
        "{{ '" + BOS_TOKEN + "' + message['role'] + '\\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- elif message['content'] is not none -%}"
        "{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{{ '" + image_placeholder + "' }}"
        "{%- elif part['type'] == 'text' and part['text'] is not none -%}{{ part['text'] }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- endif -%}"
        "{{ '" + EOS_TOKEN + "\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '" + BOS_TOKEN + "assistant\\n' }}{%- endif -%}"
    )


def build_tokenizer(
    family_tokens: Sequence[str],
    image_placeholder: str,
    *,
    extra_attributes: dict[str, str] | None = None,
    vocab_size: int = 1024,
) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` with ChatML tokens, ``family_tokens`` and the chat template.

    ``extra_attributes`` names family tokens the processors look up on the tokenizer
    (e.g. ``{"image_token": "<image>"}``); they are saved with it.
    """
    specials = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *family_tokens]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(specials, vocab_size),
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        extra_special_tokens=dict(extra_attributes or {}),
        chat_template=chat_template(image_placeholder),
        padding_side="right",
        model_max_length=4096,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(family_tokens)})
    return tokenizer
