"""Image-only variants of processors whose video half needs torchvision.

Some VLM processors (Qwen2-VL, Qwen2.5-VL, SmolVLM ...) insist on a video processor, and every
video processor in transformers needs torchvision, which this project does not install (its CPU
build is not on PyPI). Images never need it: the variant drops the video processor and keeps
everything else, and saves itself as the original class, so a folder it writes stays standard.
"""

from __future__ import annotations

import functools
import inspect

from transformers import ProcessorMixin


def needs_video_processor(processor_cls: type[ProcessorMixin]) -> bool:
    """Whether ``processor_cls`` takes a video processor (and so needs torchvision to load)."""
    return "video_processor" in inspect.signature(processor_cls.__init__).parameters


@functools.cache
def image_only(processor_cls: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """A subclass of ``processor_cls`` without the video processor; ``processor_cls`` if it has none."""
    if not needs_video_processor(processor_cls):
        return processor_cls

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # The parent hands (image, tokenizer, video=None) to ProcessorMixin, which pairs the
        # positional arguments with this class's attributes (image, tokenizer) and drops the None.
        processor_cls.__init__(
            self,
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )

    def to_dict(self):
        # Saved as the original class, with the image settings standing in for the video ones
        # (transformers' own fallback for legacy folders), so a torchvision install loads it whole.
        out = {**processor_cls.to_dict(self), "processor_class": processor_cls.__name__}
        out.setdefault("video_processor", dict(out["image_processor"]))
        return out

    return type(
        f"{processor_cls.__name__}ImageOnly",
        (processor_cls,),
        {
            "__init__": __init__,
            "to_dict": to_dict,
            "__module__": __name__,
            "__doc__": f"{processor_cls.__name__} for images only (no video processor, no torchvision).",
        },
    )
