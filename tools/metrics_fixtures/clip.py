#!/usr/bin/env python3
"""Writes metrics/tests/fixtures/clip/: a tiny random CLIPModel and torchmetrics' CLIPScore of it.

Run from the repository root, offline (nothing is downloaded):

    /work/refvenv/bin/python tools/metrics_fixtures/clip.py [OUT]      # OUT = metrics/tests/fixtures/clip

Versions it was last run with are written to golden.json ("versions").

- model/: a `CLIPModel` of `CLIPConfig` (hidden 32, 2 layers, 4 heads, projection 16, ViT-B/16
  geometry at 224 px) with transformers' own random init under torch.manual_seed(SEED), saved by
  `save_pretrained(safe_serialization=True)` beside a `CLIPProcessor` (image processor at the
  CLIP defaults, 224) whose fast tokenizer is built from a tiny byte-level BPE vocabulary learned
  here from the captions (vocab.json + merges.txt in CLIP's layout: 256 byte symbols, the same
  with `</w>`, the merges, `<|startoftext|>`, `<|endoftext|>` last). text_config.eos_token_id is
  2 as in OpenAI's checkpoints (transformers then pools at the largest id of each row).
- images/*.png: small synthetic images of several sizes and modes (down- and up-scaling, one
  already 224x224, one grayscale).
- crops/*.png: each image after the processor's resize (Pillow BICUBIC, uint8) and centre crop.
- golden.json: captions (one over 77 tokens), their token ids (whole, and the batch as
  torchmetrics feeds it), image and text embeddings of the model, text embeddings of the same
  weights with eos_token_id = the id of `a</w>` (first-occurrence pooling, position 0 when absent),
  per-sample 100*cos from torchmetrics' `_clip_score_update` and `CLIPScore(...).compute()`.
"""
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter

import numpy as np
import PIL
import torch
import torchmetrics
import transformers
from PIL import Image
from torchmetrics.functional.multimodal.clip_score import _clip_score_update
from torchmetrics.multimodal.clip_score import CLIPScore
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

SEED = 0
OUT = sys.argv[1] if len(sys.argv) > 1 else "metrics/tests/fixtures/clip"

CAPTIONS = [
    "a photo of a cat",
    "Two  DOGS playing in the snow, 3 balls!",
    "A café table with croissants & coffee at 8am",
    "an old red tractor in a wheat field",
    "a long caption " + " ".join(f"about the painting of {w} and its colours" for w in
                                 ["the river", "a bridge", "the hills", "an orchard", "the sea", "a wooden boat",
                                  "the mountains", "a lighthouse", "the meadow", "a village",
                                  "a tower", "the clouds", "a garden"]),
]


def bytes_to_unicode():
    """CLIP's (GPT-2's) reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def learn_bpe(texts, n_merges):
    """Plain BPE over CLIP's pre-tokenized words (lower case, `</w>` on the last symbol)."""
    b2u = bytes_to_unicode()
    pat = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+""")
    words = Counter()
    for t in texts:
        for w in pat.findall(" ".join(t.lower().split())):
            sym = [b2u[b] for b in w.encode("utf-8")]
            sym[-1] += "</w>"
            words[tuple(sym)] += 1
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        new = Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += c
        words = new
    return merges


def tokenizer(tmp):
    b2u = bytes_to_unicode()
    symbols = list(b2u.values())
    vocab = symbols + [s + "</w>" for s in symbols]
    merges = learn_bpe(CAPTIONS, 120)
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab = list(dict.fromkeys(vocab))
    os.makedirs(tmp, exist_ok=True)
    with open(f"{tmp}/vocab.json", "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(f"{tmp}/merges.txt", "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizerFast(vocab_file=f"{tmp}/vocab.json", merges_file=f"{tmp}/merges.txt")


def pattern(w, h, seed, gray=False):
    """A smooth synthetic picture (compresses well) with a few sharp edges."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.01, 0.06, size=(3, 2))
    ch = [127.5 + 127.5 * np.sin(f[c, 0] * x + f[c, 1] * y + c) for c in range(3)]
    img = np.stack(ch, -1)
    cx, cy, r = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h, min(w, h) / 4
    img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(0, 256, 3)
    img[(x // 8 + y // 8) % 7 == 0] = 255 - img[(x // 8 + y // 8) % 7 == 0]
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if gray:
        return Image.fromarray(img[..., 0], "L")
    return Image.fromarray(img, "RGB")


IMAGES = [  # name, width, height, gray
    ("wide_down", 480, 400, False),
    ("small_up", 120, 90, False),
    ("square_224", 224, 224, False),
    ("tall", 97, 301, False),
    ("gray", 260, 230, True),
]


def main():
    torch.manual_seed(SEED)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(f"{OUT}/images")
    os.makedirs(f"{OUT}/crops")
    model_dir = f"{OUT}/model"
    tok = tokenizer(f"{OUT}/.bpe")
    shutil.rmtree(f"{OUT}/.bpe")
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=eos - 1,
                         eos_token_id=2, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=224, patch_size=16),
        projection_dim=16,
    )
    model = CLIPModel(cfg).eval()
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok)
    model.save_pretrained(model_dir, safe_serialization=True)
    proc.save_pretrained(model_dir)
    for junk in ("vocab.json", "merges.txt"):  # the fast tokenizer's tokenizer.json suffices
        if os.path.exists(f"{model_dir}/{junk}"):
            os.remove(f"{model_dir}/{junk}")

    # images, and the uint8 crops the processor makes of them
    tensors = []
    for name, w, h, gray in IMAGES:
        im = pattern(w, h, len(tensors), gray)
        im.save(f"{OUT}/images/{name}.png", optimize=True)
        rgb = np.asarray(Image.open(f"{OUT}/images/{name}.png").convert("RGB"))
        tensors.append(torch.from_numpy(rgb.copy()).permute(2, 0, 1))
        short, long = min(w, h), max(w, h)
        nl = int(224 * long / short)
        size = (224, nl) if w <= h else (nl, 224)
        r = Image.fromarray(rgb).resize(size, Image.BICUBIC)
        left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
        r.crop((left, top, left + 224, top + 224)).save(f"{OUT}/crops/{name}.png", optimize=True)

    # reload everything through torchmetrics, as a user would: it accepts only names containing
    # "openai" (then CLIPModel/CLIPProcessor.from_pretrained) or two other families, so the
    # folder is loaded from a copy whose path says "openai"
    tm_dir = os.path.join(tempfile.mkdtemp(), "openai-tiny-clip")
    shutil.copytree(model_dir, tm_dir)
    metric = CLIPScore(model_name_or_path=tm_dir)
    tm_model, tm_proc = metric.model.eval(), metric.processor
    with torch.no_grad():
        pv = tm_proc(images=[t.cpu() for t in tensors], return_tensors="pt", padding=True)["pixel_values"]
        # the processor's pixels are exactly (crop / 255 - mean) / std of the Pillow crops
        mean = np.array(tm_proc.image_processor.image_mean, np.float32)[:, None, None]
        std = np.array(tm_proc.image_processor.image_std, np.float32)[:, None, None]
        for (name, *_), p in zip(IMAGES, pv):
            c = np.asarray(Image.open(f"{OUT}/crops/{name}.png")).transpose(2, 0, 1)
            ref = ((c.astype(np.float64) / 255).astype(np.float32) - mean) / std
            d = np.abs(ref - p.numpy()).max()
            assert d < 1e-6, f"processor pixels of {name} differ from the Pillow crop by {d}"
        img_emb = tm_model.get_image_features(pv)
        whole = [tm_proc.tokenizer(c)["input_ids"] for c in CAPTIONS]
        print("token counts", list(map(len, whole)))
        assert max(map(len, whole)) > 77, "the long caption must exceed 77 tokens"
        batch = tm_proc(text=CAPTIONS, return_tensors="pt", padding=True)
        ids, mask = batch["input_ids"][:, :77], batch["attention_mask"][:, :77]
        txt_emb = tm_model.get_text_features(ids, mask)
        per_sample, n = _clip_score_update(tensors, CAPTIONS, tm_model, tm_proc)
        metric.update(tensors, CAPTIONS)
        score = metric.compute()
        # the same weights with first-occurrence pooling: eos_token_id set to the id of "a</w>"
        # (with <|endoftext|> itself both rules pool alike here: it is the largest id, and a cut
        # row has none, so both pool at position 0 where <|startoftext|> is the largest id)
        pool_id = tok.convert_tokens_to_ids("a</w>")
        eos_cfg = CLIPConfig.from_pretrained(model_dir)
        eos_cfg.text_config.eos_token_id = pool_id
        eos_model = CLIPModel.from_pretrained(model_dir, config=eos_cfg).eval()
        txt_emb_eos = eos_model.get_text_features(ids, mask)
    if not torch.is_tensor(img_emb):  # transformers may return an output object
        img_emb, txt_emb, txt_emb_eos = (x.pooler_output for x in (img_emb, txt_emb, txt_emb_eos))
    assert (txt_emb_eos - txt_emb).abs().amax(-1).min() > 1e-3  # every row pools elsewhere

    golden = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "torchmetrics": torchmetrics.__version__, "pillow": PIL.__version__,
                     "numpy": np.__version__},
        "seed": SEED,
        "eos_token_id": eos,
        "images": [f"{name}.png" for name, *_ in IMAGES],
        "captions": CAPTIONS,
        "token_ids": whole,
        "batch_input_ids": ids.tolist(),
        "batch_attention_mask": mask.tolist(),
        "image_embeds": img_emb.tolist(),
        "text_embeds": txt_emb.tolist(),
        "pool_token_id": pool_id,
        "text_embeds_first_occurrence_pooling": txt_emb_eos.tolist(),
        "per_sample_scores": per_sample.tolist(),
        "clip_score": float(score),
        "n": int(n),
    }
    with open(f"{OUT}/golden.json", "w") as f:
        json.dump(golden, f, indent=1)
    with open(f"{OUT}/README.md", "w") as f:
        f.write("Made by `tools/metrics_fixtures/clip.py` (see its header) with "
                + ", ".join(f"{k} {v}" for k, v in golden["versions"].items()) + ".\n")
    print("per-sample", [round(x, 4) for x in per_sample.tolist()], "CLIPScore", float(score))


if __name__ == "__main__":
    main()
