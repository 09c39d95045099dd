"""Tiny Hugging Face models with random init, built in-process (nothing downloaded)."""

from __future__ import annotations

import numpy as np
import torch

from compress.datasets.base import Dataset, Split


def tiny_bert(*, seed: int = 0, vocab: int = 64, hidden: int = 32, layers: int = 2, heads: int = 4):
    """A 2-layer BERT encoder (BertModel): inputs input_ids + attention_mask, BaseModelOutput out."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    return BertModel(config, add_pooling_layer=False).eval()


def tiny_vit(*, seed: int = 0, labels: int = 10, image: int = 16, channels: int = 1):
    """A 2-layer ViT classifier: pixel_values in, ImageClassifierOutput (logits) out."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(image_size=image, patch_size=4, num_channels=channels, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, num_labels=labels)
    return ViTForImageClassification(config).eval()


def token_batch(n: int = 4, seq: int = 7, *, vocab: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids with trailing padding of different lengths per row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, seq), generator=g)
    lengths = torch.randint(2, seq + 1, (n,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def tiny_tokenizer_json(path, *, words=("the", "a", "model", "small", "runs", "on", "device", "text", "edge")):
    """A WordPiece tokenizer.json with [PAD]=0, [UNK], [CLS], [SEP] and a few words (vocab < 64)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                              ("[SEP]", 3)])
    tok.save(str(path))
    return path


VISION = ("resnet", "convnext", "mobilenet_v2", "vit")


def tiny_vision(kind: str, *, seed: int = 0, image: int = 8, labels: int = 10):
    """A small Hugging Face image classifier for 1-channel `image`×`image` inputs (sklearn digits
    are 8×8), random init. Widths are multiples of 32 so that half the channels rounds cleanly to
    the targets' channel multiples (8 / 16)."""
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "resnet":  # basic blocks with a projection shortcut in stage 2: residual adds to prune across
        config = tf.ResNetConfig(num_channels=1, embedding_size=32, hidden_sizes=[32, 64], depths=[1, 1],
                                 layer_type="basic", downsample_in_first_stage=False, num_labels=labels)
        return tf.ResNetForImageClassification(config).eval()
    if kind == "convnext":  # depthwise 7×7, channels-last LayerNorm, layer-scale parameters
        config = tf.ConvNextConfig(num_channels=1, num_stages=2, hidden_sizes=[32, 64], depths=[1, 1], patch_size=2,
                                   image_size=image, num_labels=labels)
        return tf.ConvNextForImageClassification(config).eval()
    if kind == "mobilenet_v2":  # inverted residuals: expand 1×1, depthwise 3×3, project 1×1
        config = tf.MobileNetV2Config(num_channels=1, image_size=image, depth_multiplier=0.5, finegrained_output=False,
                                      num_labels=labels)
        return tf.MobileNetV2ForImageClassification(config).eval()
    if kind == "vit":
        config = tf.ViTConfig(image_size=image, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=64, num_labels=labels)
        return tf.ViTForImageClassification(config).eval()
    raise ValueError(f"unknown kind {kind!r}: use one of {VISION}")


def token_dataset(n: int = 64, seq: int = 12) -> Dataset:
    """`n` token rows (input_ids + attention_mask, as a structured array) in every split, labels 0: unlabelled text."""
    batch = token_batch(n, seq, seed=1)
    x = np.zeros(n, dtype=[("input_ids", "int64", (seq,)), ("attention_mask", "int64", (seq,))])
    x["input_ids"], x["attention_mask"] = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    split = Split(x, np.zeros(n, dtype=np.int64))
    return Dataset(name="tokens", train=split, val=split, test=split, calib=split, input_shape=(seq,), num_classes=0,
                   labels=())
