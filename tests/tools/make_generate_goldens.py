#!/usr/bin/env python3
"""Make the greedy-generation goldens (tests/data/generate/*.json) with transformers.

For every test model in the tree (today tests/data/tiny-exaone4) and each of the ten prompts
below, this encodes the prompt with the model's tokenizer.json (no special tokens added, as
exaq-worker generate does) and records

    model.generate(input_ids, do_sample=False, max_new_tokens=64)

twice: with EOS disabled (exactly 64 new ids: what `exaq-worker generate` prints without
--stop-eos) and with the eos_token_id of generation_config.json (the ids up to and including
the first EOS: what --stop-eos prints). The model runs in float32 on the CPU, the precision of
the exaq CPU engine. A second set, "chat", renders each prompt as one user message with the
EXAONE-4.0 chat template (tests/data/chat/exaone-4.0-1.2b/chat_template.jinja, as a model
directory holding it would) and generates from that (what --chat does).

Run from the repository root (needs torch and transformers):

    python3 tests/tools/make_generate_goldens.py
"""
import json
import os
import shutil
import sys
import tempfile

import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = ["tiny-exaone4"]
CHAT_TEMPLATE = os.path.join(ROOT, "tests", "data", "chat", "exaone-4.0-1.2b",
                             "chat_template.jinja")
OUT = os.path.join(ROOT, "tests", "data", "generate")
N_NEW = 64

PROMPTS = [
    "def fibonacci(n):\n",
    "import os\nimport sys\n\n",
    "class Stack:\n    def __init__(self):\n",
    "for i in range(10):\n    print(",
    "# Read a file and count the lines\n",
    "def parse_args(argv):\n    parser = argparse.ArgumentParser(",
    "    return self.",
    "한국어 문장: 오늘은 날씨가 좋다.\n",
    "x = [1, 2, 3]\ny = ",
    "if __name__ == \"__main__\":\n",
]


def generate(model, ids, eos):
    inp = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(inp, attention_mask=torch.ones_like(inp), do_sample=False,
                             max_new_tokens=N_NEW, eos_token_id=eos, pad_token_id=0,
                             min_new_tokens=0)
    return out[0, len(ids):].tolist()


def main():
    torch.manual_seed(0)
    for name in MODELS:
        d = os.path.join(ROOT, "tests", "data", name)
        tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"))
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
        model.eval()
        with open(os.path.join(d, "generation_config.json")) as f:
            eos = json.load(f)["eos_token_id"]
        eos_list = eos if isinstance(eos, list) else [eos]
        # A disabled EOS: no id ever stops the run.
        model.generation_config.eos_token_id = None
        with tempfile.TemporaryDirectory() as td:
            for fn in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(os.path.join(d, fn), td)
            shutil.copy(CHAT_TEMPLATE, td)
            ctok = PreTrainedTokenizerFast.from_pretrained(td)
            sets = {}
            for mode in ("plain", "chat"):
                cases = []
                for p in PROMPTS:
                    if mode == "chat":
                        text = ctok.apply_chat_template([{"role": "user", "content": p}],
                                                        tokenize=False,
                                                        add_generation_prompt=True)
                    else:
                        text = p
                    ids = tok.encode(text, add_special_tokens=False)
                    free = generate(model, ids, None)
                    stop = generate(model, ids, eos_list)
                    # transformers pads after EOS; keep the ids up to the first EOS.
                    for i, t in enumerate(stop):
                        if t in eos_list:
                            stop = stop[:i + 1]
                            break
                    assert stop == free[:len(stop)], "EOS run diverged from the free run"
                    cases.append({"prompt": p, "text": text, "prompt_ids": ids,
                                  "new_ids": free, "new_ids_stop_eos": stop})
                sets[mode] = cases
        doc = {
            "model": "tests/data/" + name,
            "chat_template": os.path.relpath(CHAT_TEMPLATE, ROOT),
            "max_new_tokens": N_NEW,
            "eos_token_id": eos_list,
            "reference": "transformers %s, torch %s, float32 CPU, generate(do_sample=False)"
                         % (transformers.__version__, torch.__version__),
            "plain": sets["plain"],
            "chat": sets["chat"],
        }
        path = os.path.join(OUT, name + ".json")
        with open(path, "w") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print("wrote", os.path.relpath(path, ROOT), file=sys.stderr)


if __name__ == "__main__":
    main()
