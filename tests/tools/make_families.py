#!/usr/bin/env python3
"""Makes the tiny test checkpoints of the decoder families exaq loads besides EXAONE-4.

usage: make_families.py [OUT_DIR]      (default tests/data/families)

For each of llama, qwen2, qwen3, mistral and minicpm it writes OUT_DIR/<family>/:
  config.json, model.safetensors   random weights, saved by transformers in BF16;
  generation_config.json           as save_pretrained writes it;
  tokenizer.json, tokenizer_config.json (llama only; the byte-level BPE of
                                   tests/data/tiny-exaone4, vocab 4096, for the sweep test);
  golden.safetensors               from the reference (transformers' own model class, fp32,
                                   eager attention, on the CPU) with the SAME BF16 weights
                                   widened to fp32:
                                     ids_<s> (I32 [L_s]) and logits_<s> (F32 [L_s][vocab]) for
                                     two fixed token sequences s = 0, 1;
                                     gen_prompt (I32 [6]) and gen_ids (I32 [12]): 12 greedy
                                     tokens (argmax, full recompute per step).

Every parameter is drawn at random (weights N(0, 0.15^2), norm weights 1 + N(0, 0.2^2), biases
N(0, 0.2^2)), so that a missing norm, bias or scaling moves the logits visibly; the weights are
rounded to bf16 before the goldens are computed. What each family exercises:
  llama    Llama-3.2 style: llama3 RoPE scaling, tied embeddings, GQA 4/2
  qwen2    q/k/v biases, untied head, use_sliding_window with max_window_layers (layer 2 of
           3 slides, window 8)
  qwen3    QK-norm, explicit head_dim 32 (heads * head_dim != hidden_size), untied head
  mistral  sliding window 8 on every layer (sequence 1 is 20 tokens), untied head
  minicpm  scale_emb 3, scale_depth 1.4 over sqrt(3 layers), dim_model_base 16 (logits
           divided by hidden 64 / 16), tied head; reference in minicpm_ref.py
Shapes: hidden 64, 3 layers, 4 heads of 16 (2 KV heads), MLP 192, vocab 4096.

Needs torch and transformers (5.x); run on a development machine, never by the tests.
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import minicpm_ref  # noqa: E402  (registers model_type minicpm)
from transformers import (  # noqa: E402
    AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOK_SRC = os.path.join(ROOT, "tests", "data", "tiny-exaone4")

COMMON = dict(vocab_size=4096, hidden_size=64, intermediate_size=192, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              rms_norm_eps=1e-5, hidden_act="silu", bos_token_id=1, eos_token_id=2,
              pad_token_id=0)


def configs():
    return {
        "llama": LlamaConfig(**COMMON, tie_word_embeddings=True,
                             rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0,
                                              "factor": 8.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 64}),
        "qwen2": Qwen2Config(**COMMON, tie_word_embeddings=False, use_sliding_window=True,
                             sliding_window=8, max_window_layers=2,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        "qwen3": Qwen3Config(**COMMON, head_dim=32, tie_word_embeddings=False,
                             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        "mistral": MistralConfig(**COMMON, sliding_window=8, tie_word_embeddings=False,
                                 rope_parameters={"rope_type": "default",
                                                  "rope_theta": 10000.0}),
        "minicpm": minicpm_ref.MiniCPMConfig(**COMMON, tie_word_embeddings=True,
                                             scale_emb=3.0, scale_depth=1.4,
                                             dim_model_base=16,
                                             rope_parameters={"rope_type": "default",
                                                              "rope_theta": 10000.0},
                                             architectures=["MiniCPMForCausalLM"]),
    }


def randomize(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
            elif name.endswith(".bias"):
                v = 0.2 * torch.randn(p.shape, generator=gen)
            else:
                v = 0.15 * torch.randn(p.shape, generator=gen)
            p.copy_(v.to(torch.bfloat16).float())


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def main():
    out_root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "data",
                                                                   "families")
    gen_ids = torch.Generator().manual_seed(1234)
    seqs = [torch.randint(3, 4096, (24,), generator=gen_ids).tolist(),
            torch.randint(3, 4096, (20,), generator=gen_ids).tolist()]
    for i, (fam, cfg) in enumerate(configs().items()):
        d = os.path.join(out_root, fam)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        cfg._attn_implementation = "eager"
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32,
                                                 attn_implementation="eager")
        randomize(model, torch.Generator().manual_seed(200 + i))
        model.eval()
        golden = {}
        for s, ids in enumerate(seqs):
            golden[f"ids_{s}"] = torch.tensor(ids, dtype=torch.int32)
            golden[f"logits_{s}"] = logits_of(model, ids).contiguous()
        prompt = seqs[0][:6]
        cur = list(prompt)
        for _ in range(12):
            cur.append(int(logits_of(model, cur)[-1].argmax()))
        golden["gen_prompt"] = torch.tensor(prompt, dtype=torch.int32)
        golden["gen_ids"] = torch.tensor(cur[6:], dtype=torch.int32)
        save_file(golden, os.path.join(d, "golden.safetensors"))
        model.to(torch.bfloat16).save_pretrained(d)
        if fam == "llama":
            for f in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(os.path.join(TOK_SRC, f), os.path.join(d, f))
        with open(os.path.join(d, "config.json")) as f:
            c = json.load(f)
        print(f"{fam}: model_type={c['model_type']} tied={c.get('tie_word_embeddings')} "
              f"max|logit|={golden['logits_0'].abs().max():.3f} gen={golden['gen_ids'].tolist()}")


if __name__ == "__main__":
    main()
