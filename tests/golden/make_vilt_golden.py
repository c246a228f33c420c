"""Writes the ViLT parity fixture the C# tests compare against (tests/KernelVL.Tests/Fixtures/vilt-tiny-golden/).

Run where PyTorch, transformers and Pillow are installed (the project's GPU machine has them; the CPU is enough):
    python3 tests/golden/make_vilt_golden.py --out tests/KernelVL.Tests/Fixtures/vilt-tiny-golden

It builds a tiny random ViLT with Hugging Face transformers (the reference implementation), saves it as a checkpoint
folder the engine loads (config.json, model.safetensors, vocab.txt), and records inputs and outputs in golden.safetensors:
  - model: input_ids/attention_mask [2, T] (one caption padded), pixel_values [2, 3, 64, 96] with pixel_mask (the second
    image 64x64, padded), and the outputs: the embeddings, the last hidden states, the pooled output, the retrieval
    score (ViltForImageAndTextRetrieval.rank_output) and the MLM logits (ViltForMaskedLM, decoder tied to the word
    embeddings);
  - preprocessing: image.png (a 90x50 synthetic picture written here) and ViltImageProcessor's pixel values for it with
    shortest_edge 64 and size_divisor 16 (the longer side is then capped at int(1333 / 800 * 64) = 106);
  - tokenizer: the ids of a few captions with the vocabulary (tokenizer.json).
ViLT draws a random permutation (torch.multinomial) of an image's patches even when it keeps them all; that is
replaced by the identity so the patches stay in row-major order (attention is permutation-equivariant, so only the
order of the image rows of the hidden states changes). Ids are stored as F32 (small integers, exact).
"""
import argparse, json, os, sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
import transformers
from transformers import ViltConfig, ViltForImageAndTextRetrieval, ViltForMaskedLM

WORDS = ("a an the of on in left right above below next to small large big tiny red green blue yellow white black "
         "purple orange circle square triangle star shape picture photo dog cat man woman is are with and two three "
         "sitting standing near over under café naïve résumé").split()


def identity_multinomial(original):
    def f(input, num_samples, replacement=False, *args, **kwargs):
        if not replacement and num_samples == input.shape[-1]:
            return torch.arange(num_samples, device=input.device)
        return original(input, num_samples, replacement, *args, **kwargs)
    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(1234)
    np.random.seed(1234)
    torch.multinomial = identity_multinomial(torch.multinomial)

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(w.lower() for w in WORDS)) + ["##s", "##er", "##ing", "##e"]
    vocab_path = os.path.join(args.out, "vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")

    cfg = ViltConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=40,
                     type_vocab_size=2, modality_type_vocab_size=2, initializer_range=0.2, layer_norm_eps=1e-12,
                     image_size=64, patch_size=16, num_channels=3, qkv_bias=True, max_image_length=-1)
    retrieval = ViltForImageAndTextRetrieval(cfg).eval()
    mlm = ViltForMaskedLM(cfg).eval()
    # Random, non-trivial weights everywhere (HF initialises LayerNorm to 1/0 and biases to 0: perturb them too).
    with torch.no_grad():
        for p in retrieval.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for name, p in mlm.named_parameters():
            if name.startswith("mlm_score."):
                p.add_(0.1 * torch.randn_like(p))
    missing, unexpected = mlm.load_state_dict({k: v for k, v in retrieval.state_dict().items() if k.startswith("vilt.")}, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith("mlm_score.") for k in missing), missing
    # The decoder is tied to the word embeddings (as the checkpoints are), whatever this transformers version does on its own.
    mlm.mlm_score.decoder.weight = mlm.vilt.embeddings.text_embeddings.word_embeddings.weight
    # The output bias: mlm_score.bias in the checkpoints; some transformers versions keep it only as decoder.bias.
    head_bias = getattr(mlm.mlm_score, "bias", None)
    if not isinstance(head_bias, torch.nn.Parameter):
        head_bias = mlm.mlm_score.decoder.bias
    print("mlm head parameters:", [n for n, _ in mlm.mlm_score.named_parameters()])

    # Parameters only (no position_ids / token_type_ids buffers), the tied decoder left out, every tensor its own copy.
    state = {k: v.detach().clone().contiguous() for k, v in retrieval.state_dict().items() if not k.endswith("_ids")}
    for k, v in mlm.state_dict().items():
        if k.startswith("mlm_score.") and not k.startswith("mlm_score.decoder.") and k != "mlm_score.bias":
            state[k] = v.detach().clone().contiguous()
    state["mlm_score.bias"] = head_bias.detach().clone().contiguous()
    save_file(state, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    conf = cfg.to_dict()
    conf["kernelvl_max_image_side"] = 106
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump({k: v for k, v in conf.items() if isinstance(v, (int, float, str, bool, list)) or v is None}, f, indent=2)

    # ---- model inputs and outputs
    g = torch.Generator().manual_seed(5)
    T = 9
    ids = torch.randint(5, len(vocab), (2, T), generator=g)
    ids[:, 0] = 2; ids[0, -1] = 3; ids[1, 6] = 3; ids[1, 7:] = 0
    mask = torch.ones(2, T, dtype=torch.long); mask[1, 7:] = 0
    pixels = torch.randn(2, 3, 64, 96, generator=g).clamp(-1, 1)
    pixels[1, :, :, 64:] = 0
    pmask = torch.ones(2, 64, 96, dtype=torch.long); pmask[1, :, 64:] = 0
    with torch.no_grad():
        out = retrieval.vilt(input_ids=ids, attention_mask=mask, pixel_values=pixels, pixel_mask=pmask, output_hidden_states=True)
        score = retrieval(input_ids=ids, attention_mask=mask, pixel_values=pixels, pixel_mask=pmask).logits
        logits = mlm(input_ids=ids, attention_mask=mask, pixel_values=pixels, pixel_mask=pmask).logits
    assert torch.allclose(score, retrieval.rank_output(out.pooler_output))
    golden = {
        "input_ids": ids.float(), "attention_mask": mask.float(), "pixel_values": pixels.float(), "pixel_mask": pmask.float(),
        "embeddings": out.hidden_states[0].float(), "last_hidden_state": out.last_hidden_state.float(),
        "pooler_output": out.pooler_output.float(), "rank_score": score.float(), "mlm_logits": logits.float(),
    }

    # ---- preprocessing
    h, w = 50, 90
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 / (w - 1)), (yy * 255 / (h - 1)), 128 + 100 * np.sin(xx / 6.0) * np.cos(yy / 5.0)], axis=-1)
    img[10:30, 20:45] = [250, 20, 30]                       # a red block: sharp edges
    img = np.clip(img + np.random.uniform(-20, 20, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img, "RGB").save(os.path.join(args.out, "image.png"))
    proc_name = "none"
    try:
        from transformers import ViltImageProcessor
        proc = ViltImageProcessor(size={"shortest_edge": 64}, size_divisor=16)
        proc_name = type(proc).__name__
        pv = proc(images=Image.open(os.path.join(args.out, "image.png")), return_tensors="pt")["pixel_values"]
        golden["image_pixel_values"] = pv.float()
    except Exception as e:  # noqa: BLE001 - the model fixture is still worth writing
        print("preprocessing golden skipped:", repr(e))

    save_file({k: v.contiguous() for k, v in golden.items()}, os.path.join(args.out, "golden.safetensors"))

    # ---- tokenizer
    try:
        from transformers import BertTokenizer
        tok = BertTokenizer(vocab_path, do_lower_case=True)
    except Exception as e:  # noqa: BLE001
        print("BertTokenizer failed, using BertTokenizerFast:", repr(e))
        from transformers import BertTokenizerFast
        tok = BertTokenizerFast(vocab_file=vocab_path, do_lower_case=True)
    captions = ["A small red circle left of a blue square.", "Two DOGS sitting near the café", "naïve résumé of a star-shaped photo",
                "an unknownword and the   spaces", "the " * 30]
    tokens = {c: tok(c, truncation=True, max_length=40)["input_ids"] for c in captions}
    with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump({"max_length": 40, "cases": [{"text": c, "ids": i} for c, i in tokens.items()]}, f, indent=1, ensure_ascii=False)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(f"Written by tests/golden/make_vilt_golden.py with torch {torch.__version__}, transformers {transformers.__version__}, "
                f"image processor {proc_name}, tokenizer {type(tok).__name__}. Do not edit: rerun the script.\n")
    print("wrote", args.out, {k: tuple(v.shape) for k, v in golden.items()})


if __name__ == "__main__":
    sys.exit(main())
