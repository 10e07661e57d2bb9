#!/usr/bin/env bash
# test_server.sh - end-to-end tests of `qvl serve` on loopback with the tiny fixture model:
# curl for routes, raw SSE framing, every error status and hostile input (with a health check
# after each), concurrency (8 clients on 2 slots), disconnects, a full queue, prefix reuse,
# local files and graceful shutdown; then the official openai npm client (skipped with a message
# when npm cannot install it). Environment: QVL_SHARED, QVL_BIN (qvl CLI), QVL_SERVER_BIN
# (qvl-server; default: "$QVL_BIN serve"), QVL_BUILD (for the npm install folder).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SHARED=${QVL_SHARED:-$here/../../../shared}
QVL=${QVL_BIN:?QVL_BIN must point to the qvl binary}
if [ -n "${QVL_SERVER_BIN:-}" ]; then SERVE=("$QVL_SERVER_BIN"); else SERVE=("$QVL" serve); fi
M=$SHARED/fixtures/tiny-qwen3vl/model
IMGS=$SHARED/fixtures/tiny-qwen3vl/images
T=$(mktemp -d)
KEY=test-key-123
PROMPT="Describe this image."
NTOK=20
pass=0
fail=0
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT

ok() { # ok NAME CONDITION-RESULT(0/1) [DETAIL]
    if [ "$2" = 0 ]; then pass=$((pass + 1)); else
        fail=$((fail + 1)); echo "FAIL: $1 ${3:-}"; fi
}
js() { node "$here/helpers.cjs" "$@"; }
jget() { js get "$1"; }

# start_server NAME ARGS...: starts in the background, sets PORT_<NAME> and PID_<NAME>
start_server() {
    local name=$1
    shift
    "${SERVE[@]}" -m "$M" --port 0 -t 1 "$@" 2>"$T/$name.log" &
    local pid=$!
    pids+=("$pid")
    local port=""
    for _ in $(seq 1 100); do
        port=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$T/$name.log" 2>/dev/null | sed 's/.*://')
        [ -n "$port" ] && curl -s --max-time 2 "http://127.0.0.1:$port/health" | grep -q '"ok"' && break
        sleep 0.1
    done
    eval "PORT_$name=$port PID_$name=$pid"
}

# req OUT URL ARGS...: curl with the API key; prints the status code, body into OUT
req() {
    local out=$1 url=$2
    shift 2
    curl -s --max-time 60 -o "$out" -w '%{http_code}' -H "Authorization: Bearer $KEY" \
        -H 'Content-Type: application/json' "$@" "$url"
}

mkbody() { # mkbody IMAGE-FILE MAX_TOKENS EXTRA-JSON-FIELDS > body
    local mime=image/png
    case $1 in *.jpg) mime=image/jpeg ;; esac
    printf '{"model":"tiny","max_tokens":%s,"temperature":0%s,"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:%s;base64,%s"}},{"type":"text","text":"%s"}]}]}' \
        "$2" "${3:-}" "$mime" "$(base64 -w0 "$1")" "$PROMPT"
}

health_ok() { # health_ok PORT
    curl -s --max-time 5 "http://127.0.0.1:$1/health" | grep -q '"status":"ok"'
}

# ---- expected outputs from `qvl run` ------------------------------------------------------
imgs=(rgb_64x64.png rgb_37x129.png rgb_400x300.png rgb_400x300_q90.jpg)
for i in "${imgs[@]}"; do
    "$QVL" run -m "$M" -i "$IMGS/$i" -p "$PROMPT" --temp 0 -n $NTOK --json >"$T/exp_$i.json" 2>/dev/null
    ok "qvl run $i" $?
done
exp_text() { jget 'd.text' <"$T/exp_$1.json"; }

start_server A --slots 2 --api-key "$KEY" --allow-local-files "$IMGS" --max-body-bytes 4000000 \
    --timeout 3
P=$PORT_A
U=http://127.0.0.1:$P
ok "server A starts" "$([ -n "$P" ] && echo 0 || echo 1)" "$(tail -3 "$T/A.log")"

# ---- basic routes ------------------------------------------------------------------------------
code=$(curl -s --max-time 5 -o "$T/h" -w '%{http_code}' "$U/health")
ok "health 200 without key" "$([ "$code" = 200 ] && grep -q '"slots_total":2' "$T/h"; echo $?)"
code=$(req "$T/m" "$U/v1/models")
ok "models" "$([ "$code" = 200 ] && [ "$(jget 'd.data[0].id' <"$T/m")" = model ]; echo $?)"
code=$(req "$T/tk" "$U/tokenize" -d '{"content":"Hello world"}')
want=$("$QVL" tokenize -m "$M" "Hello world" | tr -d ' ')
ok "tokenize equals qvl tokenize" "$([ "$code" = 200 ] && [ "$(jget 'd.tokens' <"$T/tk")" = "$want" ]; echo $?)"

# ---- completions: non-streamed and streamed equal `qvl run` ----------------------------------
mkbody "$IMGS/rgb_64x64.png" $NTOK >"$T/b1.json"
code=$(req "$T/r1" "$U/v1/chat/completions" --data-binary @"$T/b1.json")
e=$T/exp_rgb_64x64.png.json
ok "completion 200" "$([ "$code" = 200 ]; echo $?)" "$code $(head -c 300 "$T/r1")"
ok "completion text = qvl run" "$([ "$(jget 'd.choices[0].message.content' <"$T/r1")" = "$(exp_text rgb_64x64.png)" ]; echo $?)"
ok "usage prompt_tokens" "$([ "$(jget 'd.usage.prompt_tokens' <"$T/r1")" = "$(jget 'd.prompt_ids.length' <"$e")" ]; echo $?)"
ok "usage completion_tokens" "$([ "$(jget 'd.usage.completion_tokens' <"$T/r1")" = "$(jget 'd.generated_ids.length' <"$e")" ]; echo $?)"
ok "finish_reason" "$([ "$(jget 'd.choices[0].finish_reason' <"$T/r1")" = "$(jget 'd.finish_reason' <"$e")" ]; echo $?)"

mkbody "$IMGS/rgb_64x64.png" $NTOK ',"stream":true,"stream_options":{"include_usage":true}' >"$T/b2.json"
curl -s -N --max-time 60 -D "$T/sh" -o "$T/sse" -H "Authorization: Bearer $KEY" --data-binary @"$T/b2.json" "$U/v1/chat/completions"
js sse <"$T/sse" >"$T/sse.json"
ok "SSE content type" "$(grep -qi '^content-type: text/event-stream' "$T/sh"; echo $?)"
ok "SSE chunked" "$(grep -qi '^transfer-encoding: chunked' "$T/sh"; echo $?)"
ok "SSE framing" "$([ "$(jget 'd.ok' <"$T/sse.json")" = true ]; echo $?)" "$(jget 'd.why' <"$T/sse.json")"
ok "SSE text = qvl run" "$([ "$(jget 'd.text' <"$T/sse.json")" = "$(exp_text rgb_64x64.png)" ]; echo $?)"
ok "SSE role, finish, one id, chunk objects" "$([ "$(jget '[d.role,d.finish,d.ids.length,d.objects].join()' <"$T/sse.json")" = "assistant,$(jget 'd.finish_reason' <"$e"),1,chat.completion.chunk" ]; echo $?)"
ok "SSE usage" "$([ "$(jget 'd.usage.completion_tokens' <"$T/sse.json")" = "$(jget 'd.generated_ids.length' <"$e")" ]; echo $?)"

# logprobs: one entry per generated token, the greedy token first in its top list, the tokens'
# bytes making the content; a stream carries the same entries
mkbody "$IMGS/rgb_64x64.png" $NTOK ',"logprobs":true,"top_logprobs":3' >"$T/blp.json"
code=$(req "$T/rlp" "$U/v1/chat/completions" --data-binary @"$T/blp.json")
ok "logprobs" "$([ "$code" = 200 ] && [ "$(jget 'const c=d.choices[0].logprobs.content; c.length==='"$(jget 'd.generated_ids.length' <"$e")"' && c.every(x=>x.top_logprobs.length===3 && x.top_logprobs[0].token===x.token && x.top_logprobs[0].logprob===x.logprob && x.logprob<=0 && x.top_logprobs[1].logprob<=x.logprob) && Buffer.from(c.flatMap(x=>x.bytes)).toString()===d.choices[0].message.content' <"$T/rlp")" = true ]; echo $?)" "$code $(head -c 300 "$T/rlp")"
ok "logprobs: same text" "$([ "$(jget 'd.choices[0].message.content' <"$T/rlp")" = "$(exp_text rgb_64x64.png)" ]; echo $?)"
mkbody "$IMGS/rgb_64x64.png" $NTOK ',"logprobs":true,"top_logprobs":3,"stream":true' >"$T/blps.json"
curl -s -N --max-time 60 -o "$T/lpsse" -H "Authorization: Bearer $KEY" --data-binary @"$T/blps.json" "$U/v1/chat/completions"
js sse <"$T/lpsse" >"$T/lpsse.json"
ok "logprobs streamed = not streamed" "$([ "$(jget 'd.ok' <"$T/lpsse.json")" = true ] && [ "$(jget 'd.logprobs' <"$T/lpsse.json")" = "$(jget 'd.choices[0].logprobs.content' <"$T/rlp")" ]; echo $?)"
mkbody "$IMGS/rgb_64x64.png" 3 ',"logprobs":true,"logit_bias":{"19127":100}' >"$T/blb.json"
code=$(req "$T/rlb" "$U/v1/chat/completions" --data-binary @"$T/blb.json")
ok "logit_bias +100 forces a token" "$([ "$code" = 200 ] && [ "$(jget 'const c=d.choices[0].logprobs.content; c.length===3 && c.every(x=>x.token===c[0].token) && d.choices[0].message.content===c[0].token.repeat(3)' <"$T/rlb")" = true ]; echo $?)" "$code $(head -c 300 "$T/rlb")"
ok "no logprobs: null" "$([ "$(jget 'd.choices[0].logprobs' <"$T/r1")" = null ]; echo $?)"

# /v1/completions: the chat template's text as a raw prompt gives the chat answer; streamed =
# not streamed; echo prepends the prompt
code=$(req "$T/rc1" "$U/v1/chat/completions" -d "{\"max_tokens\":$NTOK,\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}")
code2=$(req "$T/rc2" "$U/v1/completions" -d "{\"max_tokens\":$NTOK,\"temperature\":0,\"prompt\":\"<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n\"}")
ok "completions = chat completions on the template's text" "$([ "$code" = 200 ] && [ "$code2" = 200 ] && [ "$(jget 'd.choices[0].text' <"$T/rc2")" = "$(jget 'd.choices[0].message.content' <"$T/rc1")" ] && [ "$(jget '[d.object,d.usage.prompt_tokens].join()' <"$T/rc2")" = "text_completion,$(jget 'd.usage.prompt_tokens' <"$T/rc1")" ]; echo $?)" "$code $code2 $(head -c 300 "$T/rc2")"
curl -s -N --max-time 60 -o "$T/rc3" -H "Authorization: Bearer $KEY" -d "{\"max_tokens\":$NTOK,\"temperature\":0,\"stream\":true,\"logprobs\":2,\"prompt\":\"<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n\"}" "$U/v1/completions"
ok "completions streamed = not streamed" "$(node -e '
const fs=require("fs"); const ev=fs.readFileSync(process.argv[1],"utf8").split("\n\n").filter(e=>e.startsWith("data: ")).map(e=>e.slice(6));
if (ev.pop()!=="[DONE]") process.exit(1);
const cs=ev.map(e=>JSON.parse(e).choices[0]); const t=cs.map(c=>c.text).join("");
const toks=cs.flatMap(c=>c.logprobs?c.logprobs.tokens:[]);
const want=JSON.parse(fs.readFileSync(process.argv[2],"utf8")).choices[0].text;
process.exit(t===want && toks.join("")===want && cs[cs.length-1].finish_reason==="length" && cs.every(c=>c.logprobs===null||c.logprobs.top_logprobs.every(o=>Object.keys(o).length<=2)) ? 0 : 1)' "$T/rc3" "$T/rc2"; echo $?)"
code=$(req "$T/rc4" "$U/v1/completions" -d '{"max_tokens":2,"prompt":"Once upon","echo":true}')
ok "completions echo" "$([ "$code" = 200 ] && [ "$(jget 'd.choices[0].text.startsWith("Once upon") && d.choices[0].text.length>9' <"$T/rc4")" = true ]; echo $?)" "$code"

# echo with logprobs scores the prompt: a prompt of ids (qvl run's prompt and greedy answer)
# with max_tokens 0 gives at the answer's positions the log-probabilities qvl run --logprobs
# reported while generating; the first token has null; streamed = not streamed
"$QVL" run -m "$M" -p Hi --temp 0 -n $NTOK --json --logprobs 1 >"$T/lpcli.json" 2>/dev/null
ids=$(jget 'JSON.stringify(d.prompt_ids.concat(d.generated_ids))' <"$T/lpcli.json")
code=$(req "$T/rs1" "$U/v1/completions" -d "{\"max_tokens\":0,\"echo\":true,\"logprobs\":1,\"prompt\":$ids}")
ok "completions echo+logprobs scores the prompt" "$([ "$code" = 200 ] && node -e '
const fs=require("fs"); const r=JSON.parse(fs.readFileSync(process.argv[1],"utf8")), q=JSON.parse(fs.readFileSync(process.argv[2],"utf8"));
const c=r.choices[0], l=c.logprobs, np=q.prompt_ids.length, n=np+q.generated_ids.length;
let ok=l.tokens.length===n && l.token_logprobs[0]===null && l.top_logprobs[0]===null && l.tokens.join("")===c.text;
ok=ok && c.finish_reason==="length" && r.usage.completion_tokens===0 && r.usage.prompt_tokens===n && l.text_offset[0]===0;
for (let i=1;i<n;i++) ok=ok && l.token_logprobs[i]<=0 && Object.keys(l.top_logprobs[i]).length===1 && l.text_offset[i]>=l.text_offset[i-1];
for (let s=0;s<q.logprobs.length;s++) ok=ok && Math.abs(l.token_logprobs[np+s]-q.logprobs[s].logprob)<2e-3;
process.exit(ok?0:1)' "$T/rs1" "$T/lpcli.json"; echo $?)" "$code $(head -c 300 "$T/rs1")"
curl -s -N --max-time 60 -o "$T/rs2" -H "Authorization: Bearer $KEY" -d "{\"max_tokens\":2,\"temperature\":0,\"stream\":true,\"echo\":true,\"logprobs\":1,\"prompt\":$ids}" "$U/v1/completions"
code=$(req "$T/rs3" "$U/v1/completions" -d "{\"max_tokens\":2,\"temperature\":0,\"echo\":true,\"logprobs\":1,\"prompt\":$ids}")
ok "completions echo+logprobs streamed = not streamed" "$([ "$code" = 200 ] && node -e '
const fs=require("fs"); const ev=fs.readFileSync(process.argv[1],"utf8").split("\n\n").filter(e=>e.startsWith("data: ")).map(e=>e.slice(6));
if (ev.pop()!=="[DONE]") process.exit(1);
const cs=ev.map(e=>JSON.parse(e).choices[0]); const w=JSON.parse(fs.readFileSync(process.argv[2],"utf8")).choices[0];
const lps=cs.flatMap(c=>c.logprobs?c.logprobs.token_logprobs:[]), toks=cs.flatMap(c=>c.logprobs?c.logprobs.tokens:[]);
const offs=cs.flatMap(c=>c.logprobs?c.logprobs.text_offset:[]);
process.exit(cs.map(c=>c.text).join("")===w.text && JSON.stringify(lps)===JSON.stringify(w.logprobs.token_logprobs) && JSON.stringify(toks)===JSON.stringify(w.logprobs.tokens) && JSON.stringify(offs)===JSON.stringify(w.logprobs.text_offset) && cs[0].logprobs.tokens.length===JSON.parse(process.argv[3]).length ? 0 : 1)' "$T/rs2" "$T/rs3" "$ids"; echo $?)" "$code $(head -c 300 "$T/rs2")"

# resample: the request field gives what qvl run --resample gives
"$QVL" run -m "$M" -i "$IMGS/rgb_400x300.png" -p "$PROMPT" --temp 0 -n $NTOK --resample torchvision --json >"$T/exp_tv.json" 2>/dev/null
mkbody "$IMGS/rgb_400x300.png" $NTOK ',"resample":"torchvision"' >"$T/btv.json"
code=$(req "$T/rtv" "$U/v1/chat/completions" --data-binary @"$T/btv.json")
ok "resample torchvision = qvl run --resample torchvision" "$([ "$code" = 200 ] && [ "$(jget 'd.choices[0].message.content' <"$T/rtv")" = "$(jget 'd.text' <"$T/exp_tv.json")" ]; echo $?)" "$code"

# tools: a conversation with a call and its result is accepted; the tiny model answers in text,
# which streams as it does without streaming (the stream holds back only "<tool_call>" text)
TOOLS='"tools":[{"type":"function","function":{"name":"get_weather","description":"Weather in a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]'
MSGS='"messages":[{"role":"user","content":"Weather in Paris?"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}}]},{"role":"tool","tool_call_id":"call_1","content":"21 C"}]'
code=$(req "$T/rt1" "$U/v1/chat/completions" -d "{\"max_tokens\":$NTOK,\"temperature\":0,$TOOLS,$MSGS}")
ok "tools request" "$([ "$code" = 200 ] && [ "$(jget 'typeof d.choices[0].message.content' <"$T/rt1")" = string ]; echo $?)" "$code $(head -c 300 "$T/rt1")"
curl -s -N --max-time 60 -o "$T/rt1s" -H "Authorization: Bearer $KEY" -d "{\"max_tokens\":$NTOK,\"temperature\":0,\"stream\":true,$TOOLS,$MSGS}" "$U/v1/chat/completions"
js sse <"$T/rt1s" >"$T/rt1s.json"
ok "tools request streamed = not streamed" "$([ "$(jget 'd.ok' <"$T/rt1s.json")" = true ] && [ "$(jget 'd.text' <"$T/rt1s.json")" = "$(jget 'd.choices[0].message.content' <"$T/rt1")" ]; echo $?)"
code=$(req "$T/rt2" "$U/v1/chat/completions" -d "{\"max_tokens\":4,$TOOLS,\"tool_choice\":\"none\",$MSGS}")
ok "tool_choice none" "$([ "$code" = 200 ] && [ "$(jget 'd.usage.prompt_tokens' <"$T/rt2")" -lt "$(jget 'd.usage.prompt_tokens' <"$T/rt1")" ]; echo $?)" "$code"

# a forced tool_choice starts the answer with the call: the tiny model does not finish it within
# 3 tokens, so the text (from "<tool_call>") comes back as content, streamed or not
FC='"tool_choice":{"type":"function","function":{"name":"get_weather"}}'
code=$(req "$T/rt3" "$U/v1/chat/completions" -d "{\"max_tokens\":3,\"temperature\":0,$TOOLS,$FC,\"messages\":[{\"role\":\"user\",\"content\":\"Weather in Paris?\"}]}")
ok "tool_choice naming a function" "$([ "$code" = 200 ] && [ "$(jget 'const m=d.choices[0].message; (m.content||"").startsWith("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": ") || (m.tool_calls && m.tool_calls[0].function.name==="get_weather")' <"$T/rt3")" = true ]; echo $?)" "$code $(head -c 300 "$T/rt3")"
curl -s -N --max-time 60 -o "$T/rt3s" -H "Authorization: Bearer $KEY" -d "{\"max_tokens\":3,\"temperature\":0,\"stream\":true,$TOOLS,$FC,\"messages\":[{\"role\":\"user\",\"content\":\"Weather in Paris?\"}]}" "$U/v1/chat/completions"
js sse <"$T/rt3s" >"$T/rt3s.json"
ok "forced tool_choice streamed = not streamed" "$([ "$(jget 'd.ok' <"$T/rt3s.json")" = true ] && [ "$(jget 'd.text' <"$T/rt3s.json")" = "$(jget 'd.choices[0].message.content' <"$T/rt3")" ]; echo $?)"

# EXIF orientation: an 11x3 PNG whose eXIf says "rotate 90 counter-clockwise" (a fuzz seed); server
# A turns it upright as qvl run does, server B (--ignore-exif) keeps it as qvl run --ignore-exif
tail -c +3 "$here/../fuzz/corpus/image/png_exif_orient8" >"$T/orient8.png"
"$QVL" run -m "$M" -i "$T/orient8.png" -p "$PROMPT" --temp 0 -n $NTOK --json >"$T/exp_o8.json" 2>/dev/null
"$QVL" run -m "$M" -i "$T/orient8.png" -p "$PROMPT" --temp 0 -n $NTOK --ignore-exif --json >"$T/exp_o8i.json" 2>/dev/null
mkbody "$T/orient8.png" $NTOK >"$T/bo8.json"
code=$(req "$T/ro8" "$U/v1/chat/completions" --data-binary @"$T/bo8.json")
ok "EXIF image = qvl run" "$([ "$code" = 200 ] && [ "$(jget 'd.choices[0].message.content' <"$T/ro8")" = "$(jget 'd.text' <"$T/exp_o8.json")" ]; echo $?)" "$code"

# stop string: compare with qvl run --stop
STOP=$(js substr "$(exp_text rgb_64x64.png)" 6 3)
"$QVL" run -m "$M" -i "$IMGS/rgb_64x64.png" -p "$PROMPT" --temp 0 -n $NTOK --stop "$STOP" --json >"$T/exp_stop.json" 2>/dev/null
stop_json=$(printf '%s' "$STOP" | node -e 'process.stdout.write(JSON.stringify(require("fs").readFileSync(0,"utf8")))')
mkbody "$IMGS/rgb_64x64.png" $NTOK ",\"stop\":[$stop_json]" >"$T/b3.json"
code=$(req "$T/r3" "$U/v1/chat/completions" --data-binary @"$T/b3.json")
ok "stop string text = qvl run --stop" "$([ "$code" = 200 ] && [ "$(jget 'd.choices[0].message.content' <"$T/r3")" = "$(jget 'd.text' <"$T/exp_stop.json")" ]; echo $?)"
ok "stop string finish" "$([ "$(jget 'd.choices[0].finish_reason' <"$T/r3")" = stop ]; echo $?)"

# local files: inside the allowed folder only
b=$(printf '{"max_tokens":%d,"temperature":0,"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"file://%s/rgb_64x64.png"}},{"type":"text","text":"%s"}]}]}' $NTOK "$IMGS" "$PROMPT")
code=$(req "$T/rf" "$U/v1/chat/completions" -d "$b")
ok "file:// inside the folder" "$([ "$code" = 200 ] && [ "$(jget 'd.choices[0].message.content' <"$T/rf")" = "$(exp_text rgb_64x64.png)" ]; echo $?)"
for bad in "file:///etc/passwd" "file://$IMGS/../model/config.json" "http://127.0.0.1:$P/health"; do
    b=$(printf '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"%s"}}]}]}' "$bad")
    code=$(req "$T/rb" "$U/v1/chat/completions" -d "$b")
    ok "refused image url $bad" "$([ "$code" = 400 ] && grep -q '"error"' "$T/rb"; echo $?)" "$code"
done

# ---- prefix reuse: a follow-up turn reuses the slot's KV cache ---------------------------------
img=$(base64 -w0 "$IMGS/rgb_37x129.png")
t1=$(printf '{"max_tokens":1,"temperature":0,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,%s"}},{"type":"text","text":"What is it?"}]}]}' "$img")
t2=$(printf '{"max_tokens":12,"temperature":0,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,%s"}},{"type":"text","text":"What is it?"}]},{"role":"assistant","content":"A picture."},{"role":"user","content":"Tell me more."}]}' "$img")
code=$(req "$T/p1" "$U/v1/chat/completions" -d "$t1")
n1=$(jget 'd.usage.prompt_tokens' <"$T/p1")
code2=$(req "$T/p2" "$U/v1/chat/completions" -d "$t2")
ok "follow-up reuses the prefix" "$([ "$code$code2" = 200200 ] && [ "$(jget 'd.usage.prompt_tokens_details.cached_tokens' <"$T/p2")" = "$n1" ]; echo $?)" "$(head -c 400 "$T/p2")"
code=$(req "$T/p3" "$U/v1/chat/completions" -d "$t2") # cache now longer than the prompt: full eval
ok "repeat is evaluated from scratch" "$([ "$(jget 'd.usage.prompt_tokens_details.cached_tokens' <"$T/p3")" = 0 ]; echo $?)"
ok "reused and fresh answers agree" "$([ "$(jget 'd.choices[0].message.content' <"$T/p2")" = "$(jget 'd.choices[0].message.content' <"$T/p3")" ]; echo $?)"

# ---- errors ---------------------------------------------------------------------------------
expect() { # expect NAME STATUS CURL-ARGS... (URL defaults to chat completions when omitted)
    local name=$1 want=$2
    shift 2
    local code
    code=$(curl -s --max-time 20 -o "$T/e" -w '%{http_code}' "$@")
    ok "$name -> $want" "$([ "$code" = "$want" ] && { [ "$want" = 200 ] || node "$here/helpers.cjs" get 'd.error.message && d.error.type && d.error.code' <"$T/e" >/dev/null; }; echo $?)" "got $code: $(head -c 200 "$T/e")"
    ok "$name: healthy after" "$(health_ok "$P"; echo $?)"
}
C=$U/v1/chat/completions
AUTH=(-H "Authorization: Bearer $KEY")
expect "no API key" 401 -d '{}' "$C"
expect "wrong API key" 401 -H 'Authorization: Bearer nope' -d '{}' "$C"
expect "unknown route" 404 "${AUTH[@]}" "$U/v1/nothing"
expect "wrong method" 405 "${AUTH[@]}" "$C"
expect "wrong method on models" 405 "${AUTH[@]}" -d '{}' "$U/v1/models"
expect "malformed JSON" 400 "${AUTH[@]}" -d '{"messages": [' "$C"
expect "JSON not an object" 400 "${AUTH[@]}" -d '[1,2]' "$C"
expect "empty body" 400 "${AUTH[@]}" -X POST "$C"
expect "messages wrong type" 400 "${AUTH[@]}" -d '{"messages":"hi"}' "$C"
expect "temperature wrong type" 400 "${AUTH[@]}" -d '{"temperature":"hot","messages":[{"role":"user","content":"hi"}]}' "$C"
expect "unknown role" 400 "${AUTH[@]}" -d '{"messages":[{"role":"wizard","content":"hi"}]}' "$C"
expect "n=2" 400 "${AUTH[@]}" -d '{"n":2,"messages":[{"role":"user","content":"hi"}]}' "$C"
expect "top_logprobs without logprobs" 400 "${AUTH[@]}" -d '{"top_logprobs":2,"messages":[{"role":"user","content":"hi"}]}' "$C"
expect "completions: two prompts" 400 "${AUTH[@]}" -d '{"prompt":["a","b"]}' "$U/v1/completions"
expect "completions: max_tokens -1" 400 "${AUTH[@]}" -d '{"prompt":"a","max_tokens":-1}' "$U/v1/completions"
expect "chat: max_tokens 0" 400 "${AUTH[@]}" -d '{"messages":[{"role":"user","content":"a"}],"max_tokens":0}' "$U/v1/chat/completions"
expect "forced tool_choice without tools" 400 "${AUTH[@]}" -d '{"tool_choice":"required","messages":[{"role":"user","content":"hi"}]}' "$C"
expect "tools not an array" 400 "${AUTH[@]}" -d '{"tools":{"type":"function"},"messages":[{"role":"user","content":"hi"}]}' "$C"
expect "unknown resample" 400 "${AUTH[@]}" -d '{"resample":"bilinear","messages":[{"role":"user","content":"hi"}]}' "$C"
stops=$(printf '"s%d",' $(seq 1 17))
expect "17 stop strings" 400 "${AUTH[@]}" -d "{\"stop\":[${stops%,}],\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" "$C"
expect "max_tokens 0" 400 "${AUTH[@]}" -d '{"max_tokens":0,"messages":[{"role":"user","content":"hi"}]}' "$C"
expect "max_tokens over the context" 400 "${AUTH[@]}" -d '{"max_tokens":100000000,"messages":[{"role":"user","content":"hi"}]}' "$C"
expect "bad base64" 400 "${AUTH[@]}" -d '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,@@@@"}}]}]}' "$C"
garbage=$(head -c 300 /dev/urandom | base64 -w0)
expect "undecodable image" 400 "${AUTH[@]}" -d "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,$garbage\"}}]}]}" "$C"
expect "image 100000x100000 header" 400 "${AUTH[@]}" -d "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,$(js bigpng)\"}}]}]}" "$C"
expect "image placeholder in text" 400 "${AUTH[@]}" -d '{"messages":[{"role":"user","content":"<|image_pad|>"}]}' "$C"
expect "video placeholder in text" 400 "${AUTH[@]}" -d '{"messages":[{"role":"user","content":"<|vision_start|><|video_pad|><|vision_end|>"}]}' "$C"
for kind in image_url video_url; do # the url must be a string, in an object or bare
    for bad in '{"url":5}' '[]'; do
        expect "$kind $bad" 400 "${AUTH[@]}" -d "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"$kind\",\"$kind\":$bad}]}]}" "$C"
        ok "$kind $bad: message names the part" "$(grep -q "content\[0\].$kind.url must be a string" "$T/e"; echo $?)" "$(head -c 200 "$T/e")"
    done
done

# ---- video_url parts: same tokens as qvl run --video; budget; bad videos ------------------------
if command -v ffmpeg >/dev/null; then
    VID=$SHARED/fixtures/tiny-qwen3vl/videos/tiny_clip_96x64_4fps
    ffmpeg -loglevel error -framerate 4 -i "$VID/frame_%04d.png" -c:v libx264rgb -qp 0 -pix_fmt rgb24 "$T/clip.mp4"
    "$QVL" run -m "$M" --video "$T/clip.mp4" -p "What happens in this video?" -n $NTOK --temp 0 --json >"$T/exp_vid.json" 2>/dev/null
    printf '{"max_tokens":%d,"temperature":0,"messages":[{"role":"user","content":[{"type":"video_url","video_url":{"url":"data:video/mp4;base64,%s"}},{"type":"text","text":"What happens in this video?"}]}]}' $NTOK "$(base64 -w0 "$T/clip.mp4")" >"$T/vid.json"
    code=$(req "$T/rv" "$C" --data-binary @"$T/vid.json")
    ok "video_url text = qvl run --video" "$([ "$code" = 200 ] && [ "$(jget 'd.choices[0].message.content' <"$T/rv")" = "$(jget 'd.text' <"$T/exp_vid.json")" ]; echo $?)" "$code $(head -c 300 "$T/rv")"
    ok "video_url prompt tokens = qvl run" "$([ "$(jget 'd.usage.prompt_tokens' <"$T/rv")" = "$(jget 'd.prompt_ids.length' <"$T/exp_vid.json")" ]; echo $?)"
    b=$(printf '{"max_tokens":2,"messages":[{"role":"user","content":[{"type":"video_url","video_url":{"url":"file://%s/../videos/none.mp4"}}]}]}' "$IMGS")
    expect "video file:// outside the folder" 400 "${AUTH[@]}" -d "$b" "$C"
    # 16 sampled frames of 1920x1080 are 33 Mpx: over the 16 Mpx request budget, refused before decoding
    ffmpeg -loglevel error -f lavfi -i testsrc=s=1920x1080:r=2:d=8 -c:v libx264 -preset ultrafast -pix_fmt yuv420p "$T/big.mp4"
    printf '{"messages":[{"role":"user","content":[{"type":"video_url","video_url":{"url":"data:video/mp4;base64,%s"}}]}]}' "$(base64 -w0 "$T/big.mp4")" >"$T/bigv.json"
    expect "video over the pixel budget" 400 "${AUTH[@]}" --data-binary @"$T/bigv.json" "$C"
    head -c 3000 "$T/clip.mp4" | base64 -w0 >"$T/cut.b64"
    printf '{"messages":[{"role":"user","content":[{"type":"video_url","video_url":{"url":"data:video/mp4;base64,%s"}}]}]}' "$(cat "$T/cut.b64")" >"$T/cutv.json"
    expect "truncated video" 400 "${AUTH[@]}" --data-binary @"$T/cutv.json" "$C"
    expect "video in an assistant message" 400 "${AUTH[@]}" -d '{"messages":[{"role":"assistant","content":[{"type":"video_url","video_url":{"url":"data:video/mp4;base64,AAAA"}}]},{"role":"user","content":"hi"}]}' "$C"
    expect "video data URI of another type" 400 "${AUTH[@]}" -d '{"messages":[{"role":"user","content":[{"type":"video_url","video_url":{"url":"data:image/png;base64,AAAA"}}]}]}' "$C"
else
    echo "SKIP: ffmpeg CLI not found, video_url checks skipped" >&2
fi
long=$(printf 'hello %.0s' $(seq 1 5000))
expect "prompt over the context" 400 "${AUTH[@]}" -d "{\"messages\":[{\"role\":\"user\",\"content\":\"$long\"}]}" "$C"
printf '{"messages":[{"role":"user","content":"\xff\xfe bad \xc3"}]}' >"$T/nonutf8"
expect "non-UTF-8 body" 400 "${AUTH[@]}" --data-binary @"$T/nonutf8" "$C"
head -c 5000000 /dev/zero | tr '\0' 'a' >"$T/huge"
expect "huge body (Content-Length)" 413 "${AUTH[@]}" --data-binary @"$T/huge" "$C"
expect "huge body (chunked)" 413 "${AUTH[@]}" -H 'Transfer-Encoding: chunked' --data-binary @"$T/huge" "$C"
expect "tokenize bad body" 400 "${AUTH[@]}" -d '{"content":5}' "$U/tokenize"

# slowloris: partial headers / partial body are dropped after --timeout (3 s), others served
exec 5<>"/dev/tcp/127.0.0.1/$P"
printf 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le' >&5
exec 6<>"/dev/tcp/127.0.0.1/$P"
printf 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 100\r\n\r\n{"mess' "$KEY" >&6
ok "healthy during slowloris" "$(health_ok "$P"; echo $?)"
t0=$(date +%s)
timeout 10 cat <&5 >/dev/null
timeout 10 cat <&6 >/dev/null
t1=$(date +%s)
exec 5<&- 6<&-
ok "slowloris connections closed by the server" "$([ $((t1 - t0)) -le 8 ]; echo $?)" "$((t1 - t0)) s"
ok "healthy after slowloris" "$(health_ok "$P"; echo $?)"

# ---- concurrency: 8 clients on 2 slots ------------------------------------------------------
for k in 0 1 2 3 4 5 6 7; do
    i=${imgs[$((k % 4))]}
    mkbody "$IMGS/$i" $NTOK >"$T/cb$k.json"
done
cpids=()
for k in 0 1 2 3 4 5 6 7; do
    if [ $((k % 2)) = 0 ]; then
        req "$T/cr$k" "$C" --data-binary @"$T/cb$k.json" >"$T/cc$k" &
    else
        sed 's/"temperature":0/"temperature":0,"stream":true/' "$T/cb$k.json" >"$T/cs$k.json"
        curl -s -N --max-time 60 -o "$T/cr$k" -w '%{http_code}' "${AUTH[@]}" --data-binary @"$T/cs$k.json" "$C" >"$T/cc$k" &
    fi
    cpids+=($!)
done
wait "${cpids[@]}"
allgood=0
for k in 0 1 2 3 4 5 6 7; do
    i=${imgs[$((k % 4))]}
    if [ $((k % 2)) = 0 ]; then got=$(jget 'd.choices[0].message.content' <"$T/cr$k" 2>/dev/null)
    else got=$(js sse <"$T/cr$k" | jget 'd.text' 2>/dev/null); fi
    if [ "$(cat "$T/cc$k")" != 200 ] || [ "$got" != "$(exp_text "$i")" ]; then
        allgood=1
        echo "client $k ($i): status $(cat "$T/cc$k"), got '$got'"
    fi
done
ok "8 concurrent clients on 2 slots all correct" $allgood

# ---- server B: one slot, queue of one: disconnects and a full queue ----------------------------
start_server B --slots 1 --queue 1 --ctx 8192 --ignore-exif --allow-remote-media --fetch-timeout 2
PB=$PORT_B
UB=http://127.0.0.1:$PB
mkbody "$IMGS/rgb_64x64.png" 8000 ',"ignore_eos":true,"stream":true' >"$T/long_s.json"
mkbody "$IMGS/rgb_64x64.png" 8000 ',"ignore_eos":true' >"$T/long.json"
idle_after() { # idle_after PORT SECONDS: 0 when the slot is idle within the time
    for _ in $(seq 1 $(($2 * 10))); do
        curl -s --max-time 2 "http://127.0.0.1:$1/health" | grep -q '"slots_idle":1,"queued":0' && return 0
        sleep 0.1
    done
    return 1
}
t0=$(date +%s%N)
curl -s -N --max-time 1 -o "$T/cut" --data-binary @"$T/long_s.json" "$UB/v1/chat/completions"
ok "stream was cut mid-way" "$(grep -q 'data: {' "$T/cut" && ! grep -q 'DONE' "$T/cut"; echo $?)"
ok "disconnected stream frees the slot" "$(idle_after "$PB" 3; echo $?)"
curl -s --max-time 1 -o /dev/null --data-binary @"$T/long.json" "$UB/v1/chat/completions"
ok "disconnected non-stream request frees the slot" "$(idle_after "$PB" 3; echo $?)"
ok "cancellations logged" "$([ "$(grep -c 'finish=cancelled' "$T/B.log")" -ge 2 ]; echo $?)" "$(tail -3 "$T/B.log")"
code=$(curl -s --max-time 30 -o "$T/after" -w '%{http_code}' --data-binary @"$T/b1.json" "$UB/v1/chat/completions")
ok "slot serves again after disconnects" "$([ "$code" = 200 ] && [ "$(jget 'd.choices[0].message.content' <"$T/after")" = "$(exp_text rgb_64x64.png)" ]; echo $?)"
code=$(curl -s --max-time 30 -o "$T/ro8i" -w '%{http_code}' --data-binary @"$T/bo8.json" "$UB/v1/chat/completions")
ok "--ignore-exif server = qvl run --ignore-exif" "$([ "$code" = 200 ] && [ "$(jget 'd.choices[0].message.content' <"$T/ro8i")" = "$(jget 'd.text' <"$T/exp_o8i.json")" ] && [ "$(jget 'd.text' <"$T/exp_o8i.json")" != "$(jget 'd.text' <"$T/exp_o8.json")" ]; echo $?)" "$code"

# ---- remote media (server B has --allow-remote-media): http URLs from a loopback server --------
node "$here/media_server.cjs" "$IMGS" >"$T/media.port" 2>"$T/media.log" &
pids+=("$!")
for _ in $(seq 1 50); do [ -s "$T/media.port" ] && break; sleep 0.1; done
MP=$(head -1 "$T/media.port")
MU=http://127.0.0.1:$MP
remote_body() { # remote_body KIND URL
    printf '{"max_tokens":%d,"temperature":0,"messages":[{"role":"user","content":[{"type":"%s","%s":{"url":"%s"}},{"type":"text","text":"%s"}]}]}' \
        $NTOK "$1" "$1" "$2" "$PROMPT"
}
code=$(curl -s --max-time 30 -o "$T/rr" -w '%{http_code}' -d "$(remote_body image_url "$MU/rgb_64x64.png")" "$UB/v1/chat/completions")
ok "http image URL = qvl run" "$([ "$code" = 200 ] && [ "$(jget 'd.choices[0].message.content' <"$T/rr")" = "$(exp_text rgb_64x64.png)" ]; echo $?)" "$code $(head -c 300 "$T/rr")"
code=$(curl -s --max-time 30 -o "$T/rr" -w '%{http_code}' -d "$(remote_body image_url "$MU/redirect/rgb_64x64.png")" "$UB/v1/chat/completions")
ok "http image URL through a redirect" "$([ "$code" = 200 ] && [ "$(jget 'd.choices[0].message.content' <"$T/rr")" = "$(exp_text rgb_64x64.png)" ]; echo $?)" "$code $(head -c 300 "$T/rr")"
remote_bad() { # remote_bad NAME URL MESSAGE-PART
    local t0 t1 code
    t0=$(date +%s)
    code=$(curl -s --max-time 30 -o "$T/rb" -w '%{http_code}' -d "$(remote_body image_url "$2")" "$UB/v1/chat/completions")
    t1=$(date +%s)
    ok "remote $1 -> 400 '$3'" "$([ "$code" = 400 ] && grep -q "$3" "$T/rb" && [ $((t1 - t0)) -le 6 ]; echo $?)" "$code in $((t1 - t0)) s: $(head -c 300 "$T/rb")"
    ok "remote $1: healthy after" "$(health_ok "$PB"; echo $?)"
}
remote_bad "404" "$MU/missing" "HTTP 404"
remote_bad "redirect to file://" "$MU/to-file" "cannot download the URL"
remote_bad "no answer (--fetch-timeout 2)" "$MU/slow" "cannot download the URL"
remote_bad "Content-Length over 64 MiB" "$MU/big-length" "larger than"
remote_bad "65 MiB without a length" "$MU/big-chunked" "larger than"
remote_bad "empty body" "$MU/empty" "empty"
remote_bad "not an image" "$MU/not-image" "cannot be used"
remote_bad "closed port" "http://127.0.0.1:1/x.png" "cannot download the URL"
if [ -s "$T/clip.mp4" ]; then
    cp "$T/clip.mp4" "$T/media_clip.mp4"
    node "$here/media_server.cjs" "$T" >"$T/media2.port" 2>>"$T/media.log" &
    pids+=("$!")
    for _ in $(seq 1 50); do [ -s "$T/media2.port" ] && break; sleep 0.1; done
    b=$(printf '{"max_tokens":%d,"temperature":0,"messages":[{"role":"user","content":[{"type":"video_url","video_url":{"url":"http://127.0.0.1:%s/media_clip.mp4"}},{"type":"text","text":"What happens in this video?"}]}]}' $NTOK "$(head -1 "$T/media2.port")")
    code=$(curl -s --max-time 30 -o "$T/rv2" -w '%{http_code}' -d "$b" "$UB/v1/chat/completions")
    ok "http video URL = qvl run --video" "$([ "$code" = 200 ] && [ "$(jget 'd.choices[0].message.content' <"$T/rv2")" = "$(jget 'd.text' <"$T/exp_vid.json")" ]; echo $?)" "$code $(head -c 300 "$T/rv2")"
    "$QVL" run -m "$M" --video "http://127.0.0.1:$(head -1 "$T/media2.port")/media_clip.mp4" -p "What happens in this video?" -n $NTOK --temp 0 --json >"$T/run_vurl.json" 2>"$T/run_vurl.err"
    ok "qvl run --video URL = qvl run --video FILE" "$([ "$(jget 'd.text' <"$T/run_vurl.json")" = "$(jget 'd.text' <"$T/exp_vid.json")" ]; echo $?)" "$(head -c 300 "$T/run_vurl.err")"
fi
"$QVL" run -m "$M" -i "$MU/rgb_64x64.png" -p "$PROMPT" --temp 0 -n $NTOK --json >"$T/run_url.json" 2>"$T/run_url.err"
ok "qvl run -i URL = qvl run -i FILE" "$([ "$(jget 'd.text' <"$T/run_url.json")" = "$(exp_text rgb_64x64.png)" ]; echo $?)" "$(head -c 300 "$T/run_url.err")"
"$QVL" run -m "$M" -i "$MU/missing" -p "$PROMPT" -n 2 >/dev/null 2>"$T/run_url.err"
rc=$?
ok "qvl run -i URL that answers 404: exit 1 and a message" "$([ $rc = 1 ] && grep -q 'HTTP 404' "$T/run_url.err"; echo $?)" "rc $rc: $(head -c 300 "$T/run_url.err")"

curl -s --max-time 20 -o /dev/null --data-binary @"$T/long.json" "$UB/v1/chat/completions" &
c1=$!
sleep 0.3
curl -s --max-time 20 -o /dev/null --data-binary @"$T/long.json" "$UB/v1/chat/completions" &
c2=$!
for _ in $(seq 1 30); do
    curl -s --max-time 2 "$UB/health" | grep -q '"slots_idle":0,"queued":1' && break
    sleep 0.1
done
code=$(curl -s --max-time 10 -D "$T/qh" -o "$T/q" -w '%{http_code}' --data-binary @"$T/b1.json" "$UB/v1/chat/completions")
ok "full queue gives 503" "$([ "$code" = 503 ] && grep -qi '^retry-after:' "$T/qh" && grep -q '"error"' "$T/q"; echo $?)" "$code"
kill "$c1" "$c2" 2>/dev/null
wait "$c1" "$c2" 2>/dev/null
ok "queue drains after clients leave" "$(idle_after "$PB" 5; echo $?)"

# graceful shutdown while a request runs: exit 0, promptly
curl -s --max-time 30 -o /dev/null --data-binary @"$T/long.json" "$UB/v1/chat/completions" &
c1=$!
sleep 0.5
t0=$(date +%s)
kill -TERM "$PID_B"
wait "$PID_B"
rc=$?
t1=$(date +%s)
wait "$c1" 2>/dev/null
ok "SIGTERM with a running request: exit 0" "$([ $rc = 0 ] && [ $((t1 - t0)) -le 10 ]; echo $?)" "rc $rc after $((t1 - t0)) s"

# ---- the official openai client ----------------------------------------------------------------
nodedir=${QVL_BUILD:-$T}/server-node
mkdir -p "$nodedir"
cp "$here/package.json" "$here/package-lock.json" "$here/openai_client.mjs" "$nodedir/"
if [ -d "$nodedir/node_modules/openai" ] ||
    (cd "$nodedir" && timeout 120 npm ci --no-audit --no-fund --loglevel=error >"$T/npm.log" 2>&1); then
    d=$T/node
    mkdir -p "$d"
    base64 -w0 "$IMGS/rgb_64x64.png" >"$d/img.b64"
    printf '%s' "$PROMPT" >"$d/prompt.txt"
    printf '%s' "$STOP" >"$d/stop.txt"
    node -e 'const f=require("fs");const d=JSON.parse(f.readFileSync(process.argv[1]));d.max_tokens=+process.argv[2];f.writeFileSync(process.argv[3],JSON.stringify(d))' \
        "$T/exp_rgb_64x64.png.json" $NTOK "$d/expected.json"
    cp "$T/exp_stop.json" "$d/expected_stop.json"
    QVL_TEST_PORT=$P QVL_TEST_KEY=$KEY QVL_TEST_DIR=$d timeout 120 node "$nodedir/openai_client.mjs"
    ok "openai npm client tests" $?
else
    echo "SKIP: openai npm client tests (npm ci failed, no network?): $(tail -2 "$T/npm.log")"
fi

kill -INT "$PID_A"
wait "$PID_A"
ok "SIGINT: exit 0" $?
ok "log has one line per request and no base64" "$(! grep -q 'iVBORw0KGgo' "$T/A.log" && [ "$(grep -c 'POST /v1/chat/completions' "$T/A.log")" -ge 25 ]; echo $?)"
ok "no sanitizer reports" "$(! grep -q 'Sanitizer\|runtime error' "$T/A.log" "$T/B.log"; echo $?)" "$(grep -h -A5 'Sanitizer\|runtime error' "$T/A.log" "$T/B.log" | head -20)"
if [ $fail != 0 ]; then
    echo "--- server A log (tail) ---"
    tail -20 "$T/A.log"
fi
echo "$pass passed, $fail failed"
[ $fail = 0 ]
