#!/usr/bin/env python3
"""Writes the recorded tool outputs in this directory, in the formats the tools write them.

vllm_latency.json: what `vllm bench latency --output-json` writes (vllm/benchmarks/latency.py:
the dict of avg_latency, std_latency, latencies and percentiles, json.dump(indent=4)), from
five illustrative latencies (made-up values in the real format, not a measurement).

lm_eval_results.json: what lm-evaluation-harness writes as results_DATE.json
(lm_eval/loggers/evaluation_tracker.py save_results_aggregated: the evaluator's results dict
plus task_hashes and the general config tracker's fields, json.dumps(indent=2,
ensure_ascii=False)), with the keys "METRIC,FILTER" of lm_eval/evaluator.py.

Run on the development machine with numpy; the tests read the files, never this script.
"""
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# vLLM latency benchmark, exactly the code path of latency.py's JSON output.
latencies = np.array([0.5612408, 0.5587193, 0.5633871, 0.5601254, 0.5649022])
percentages = [10, 25, 50, 75, 90, 99]
percentiles = np.percentile(latencies, percentages)
results = {
    "avg_latency": np.mean(latencies).item(),
    "std_latency": np.std(latencies).item(),
    "latencies": latencies.tolist(),
    "percentiles": dict(zip(percentages, percentiles.tolist())),
}
with open(os.path.join(HERE, "vllm_latency.json"), "w") as f:
    json.dump(results, f, indent=4)

# lm-evaluation-harness: a plain task, a task with two filters and an "N/A" stderr, and a
# group with a subtask (groups appear in both "results" and "groups").
lm = {
    "results": {
        "arc_easy": {
            "alias": "arc_easy",
            "acc,none": 0.7487373737373737,
            "acc_stderr,none": 0.008906926758232566,
            "acc_norm,none": 0.7154882154882155,
            "acc_norm_stderr,none": 0.009258050925618821,
        },
        "gsm8k": {
            "alias": "gsm8k",
            "exact_match,strict-match": 0.4025,
            "exact_match_stderr,strict-match": 0.024551589707124515,
            "exact_match,flexible-extract": 0.415,
            "exact_match_stderr,flexible-extract": "N/A",
        },
        "kmmlu": {
            "acc,none": 0.3821,
            "acc_stderr,none": 0.0153,
            "alias": "kmmlu",
        },
        "kmmlu_accounting": {
            "alias": " - kmmlu_accounting",
            "acc,none": 0.34,
            "acc_stderr,none": 0.047609522856952365,
        },
    },
    "groups": {
        "kmmlu": {
            "acc,none": 0.3821,
            "acc_stderr,none": 0.0153,
            "alias": "kmmlu",
        }
    },
    "group_subtasks": {"arc_easy": [], "gsm8k": [], "kmmlu": ["kmmlu_accounting"]},
    "configs": {
        "arc_easy": {"task": "arc_easy", "dataset_path": "allenai/ai2_arc", "num_fewshot": 0},
        "gsm8k": {"task": "gsm8k", "dataset_path": "gsm8k", "num_fewshot": 5},
        "kmmlu_accounting": {"task": "kmmlu_accounting", "dataset_path": "HAERAE-HUB/KMMLU"},
    },
    "versions": {"arc_easy": 1.0, "gsm8k": 3.0, "kmmlu": 2.0, "kmmlu_accounting": 2.0},
    "n-shot": {"arc_easy": 0, "gsm8k": 5, "kmmlu_accounting": 0},
    "higher_is_better": {
        "arc_easy": {"acc": True, "acc_norm": True},
        "gsm8k": {"exact_match": True},
        "kmmlu": {"acc": True},
        "kmmlu_accounting": {"acc": True},
    },
    "n-samples": {
        "arc_easy": {"original": 2376, "effective": 2376},
        "gsm8k": {"original": 1319, "effective": 400},
        "kmmlu_accounting": {"original": 100, "effective": 100},
    },
    "config": {
        "model": "vllm",
        "model_args": "pretrained=/models/exaone-4.0-1.2b-w4a16",
        "batch_size": "auto",
        "batch_sizes": [],
        "device": None,
        "use_cache": None,
        "limit": 400.0,
        "bootstrap_iters": 100000,
        "gen_kwargs": None,
        "random_seed": 0,
        "numpy_seed": 1234,
        "torch_seed": 1234,
        "fewshot_seed": 1234,
    },
    "git_hash": "8f2a8a9",
    "date": 1796000000.123456,
    "task_hashes": {},
    "model_source": "vllm",
    "model_name": "/models/exaone-4.0-1.2b-w4a16",
    "model_name_sanitized": "__models__exaone-4.0-1.2b-w4a16",
    "system_instruction": None,
    "system_instruction_sha": None,
    "fewshot_as_multiturn": False,
    "chat_template": None,
    "chat_template_sha": None,
    "start_time": 123456.789,
    "end_time": 123789.012,
    "total_evaluation_time_seconds": "332.223",
}
with open(os.path.join(HERE, "lm_eval_results.json"), "w", encoding="utf-8") as f:
    f.write(json.dumps(lm, indent=2, ensure_ascii=False))
