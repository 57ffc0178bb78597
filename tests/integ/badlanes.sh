# Acceptance: each malformed lanes file gets exit 1, a message naming the problem with its
# file:line:column, and nothing queued.
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/w"
fake_model "$T/w/base"
start_daemon
n=0
check() {
    # check NAME EXPECTED-LOCATION EXPECTED-TEXT  (the YAML comes on stdin)
    n=$((n + 1))
    f="$T/w/$1.yaml"
    cat >"$f"
    expect_rc 1 ctl submit "$f"
    grep -q "^$f:$2: error: .*$3" "$ERR" || fail "$1: want '$f:$2: error: ...$3', got: $(cat "$ERR")"
    [ ! -s "$OUT" ] || fail "$1: printed a sweep id on failure"
}
check syntax 5:1 "invalid YAML" <<'YAML'
version: 1
sweep: bad
base_model: ./base
lanes: [ {id: a
YAML
check unknown_key 5:34 "unknown key 'dampenin'" <<'YAML'
version: 1
sweep: bad
base_model: ./base
lanes:
  - {id: a, stages: [{quantize: {dampenin: 0.1, method: rtn}}]}
YAML
check wrong_type 5:59 "group_size" <<'YAML'
version: 1
sweep: bad
base_model: ./base
lanes:
  - {id: a, stages: [{quantize: {method: rtn, group_size: abc}}]}
YAML
check missing_base 3:13 "base_model" <<'YAML'
version: 1
sweep: bad
base_model: ./no-such-model
lanes:
  - {id: a, stages: [{exec: {run: "true"}}]}
YAML
check duplicate_lane 6:10 "duplicate lane id 'a'" <<'YAML'
version: 1
sweep: bad
base_model: ./base
lanes:
  - {id: a, stages: [{exec: {run: "true"}}]}
  - {id: a, stages: [{exec: {run: "false"}}]}
YAML
check unknown_kind 5:23 "unknown stage kind 'quantise'" <<'YAML'
version: 1
sweep: bad
base_model: ./base
lanes:
  - {id: a, stages: [{quantise: {method: rtn}}]}
YAML
check matrix_path 6:14 "matrix path 'quantize.dampenin' names no field" <<'YAML'
version: 1
sweep: bad
base_model: ./base
lanes:
  - id: a
    matrix: {quantize.dampenin: [0.01, 0.02]}
    stages: [{quantize: {method: gptq}}]
calibration: {text: ./base/config.json}
YAML
check lanes_not_list 4:8 "'lanes' must be a list" <<'YAML'
version: 1
sweep: bad
base_model: ./base
lanes: {id: a}
YAML
check eval_name_bad 5:17 "eval name 'Wiki-1' must be 1 to 24 characters of a-z, 0-9 and '_'" <<'YAML'
version: 1
sweep: bad
base_model: ./base
eval:
  - ppl: {name: Wiki-1, text: ./base/config.json}
lanes:
  - {id: a, stages: [{exec: {run: "true"}}]}
YAML
check eval_name_clash 7:5 "eval 'eval.mcqa' would write metric 'wiki.\\*', which eval 'eval.ppl' (line 6) also writes" <<'YAML'
version: 1
sweep: bad
base_model: ./base
eval:
  - speed: {}
  - ppl: {name: wiki, text: ./base/config.json}
  - mcqa: {name: wiki, items: ./base/config.json}
lanes:
  - {id: a, stages: [{exec: {run: "true"}}]}
YAML
check eval_task_clash 6:5 "eval 'eval.ppl' would write metric 'arc_easy.\\*', which eval 'eval.lm_eval' (line 5) also writes" <<'YAML'
version: 1
sweep: bad
base_model: ./base
eval:
  - lm_eval: {tasks: [arc_easy]}
  - ppl: {name: arc_easy, text: ./base/config.json}
lanes:
  - {id: a, stages: [{exec: {run: "true"}}]}
YAML
check base_model_absent 1:1 "base_model" <<'YAML'
version: 1
sweep: bad
lanes:
  - {id: a, stages: [{exec: {run: "true"}}]}
YAML
# gpu_mem_gb beyond every slot: refused at submit, naming the stage and the largest slot (this
# daemon's slots are CPU slots unless the machine has a GPU; then the ask is beyond any GPU).
max_gb=$(status_json | jq '[.daemon.slots[].gpu_mem_gb // 0] | max')
if [ "$max_gb" = 0 ]; then slot_text="has no GPU slot"; else slot_text="largest worker slot has"; fi
check gpu_mem_beyond_slots 5:25 "stage 'exec' of lane 'big': gpu_mem_gb=100000 but .*$slot_text" <<'YAML'
version: 1
sweep: bad
base_model: ./base
lanes:
  - {id: big, stages: [{exec: {run: "true", gpu_mem_gb: 100000}}]}
YAML
check gpu_mem_default 7:15 "stage 'exec' of lane 'a': gpu_mem_gb=100000" <<'YAML'
version: 1
sweep: bad
base_model: ./base
defaults: {gpu_mem_gb: 100000}
lanes:
  - id: a
    stages: [{exec: {run: "true"}}]
YAML
[ "$(status_json | jq '.sweeps | length')" -eq 0 ] || fail "a bad file queued a sweep"
expect_rc 0 ctl ping
echo "badlanes ok ($n cases)"
