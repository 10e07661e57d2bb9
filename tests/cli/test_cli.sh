#!/usr/bin/env bash
# CLI tests: each command on the tiny fixture model, the encode -> embeddings example round trip,
# and bad input giving a clear message and a non-zero exit status.
set -u
BIN=${QVL_BIN:?}; BUILD=${QVL_BUILD:?}; S=${QVL_SHARED:?}/fixtures/tiny-qwen3vl
M=$S/model
pass=0; fail=0
ok()   { pass=$((pass+1)); }
bad()  { fail=$((fail+1)); echo "FAIL: $*" >&2; }
# expect_fail CMD... : non-zero exit and something on stderr
expect_fail() {
    local err; err=$("$@" 2>&1 >/dev/null); local rc=$?
    if [ $rc -ne 0 ] && [ -n "$err" ] && [ $rc -lt 128 ]; then ok; else bad "expected a clean failure (rc=$rc): $* :: $err"; fi
}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT

# info
out=$("$BIN" info -m "$M" --json) && echo "$out" | grep -q '"deepstack_visual_indexes"' && ok || bad "info --json"
"$BIN" info -m "$M" | grep -q "tied" && ok || bad "info text"
# tokenize / detokenize
[ "$("$BIN" tokenize -m "$M" "Describe this image.")" = "[74785, 419, 2168, 13]" ] && ok || bad tokenize
[ "$("$BIN" detokenize -m "$M" 74785 419 2168 13)" = "Describe this image." ] && ok || bad detokenize
# preprocess
out=$("$BIN" preprocess --json "$S/images/rgb_400x300.png")
echo "$out" | grep -q '"grid_thw":\[1,18,24\],"tokens":108' && ok || bad "preprocess json: $out"
# run --json on the golden case
out=$("$BIN" run -m "$M" -i "$S/images/rgb_64x64.png" -p "Describe this image." -n 20 --temp 0 --json --top-logits 3 -t 2)
want=$(tr -d ' \n' < "$S/golden/tiny_1img_png.json" | grep -o '"generated_ids":\[[^]]*\]' | head -1 | sed 's/.*\[//; s/\]//')
got=$(echo "$out" | grep -o '"generated_ids":\[[^]]*\]' | sed 's/.*\[//; s/\]//')
[ "$got" = "$want" ] && ok || bad "run --json generated_ids: $got vs $want"
echo "$out" | grep -q '"finish_reason":"length"' && ok || bad "finish_reason"
echo "$out" | grep -q '"prompt_top_logits":\[\[143189,' && ok || bad "prompt_top_logits"
# --logprobs: an entry per generated token, the greedy id first in its top list
out=$("$BIN" run -m "$M" -i "$S/images/rgb_64x64.png" -p "Describe this image." -n 20 --temp 0 --json --logprobs 2 -t 2)
n=$(echo "$out" | grep -o '{"id":[0-9]*,"logprob":-[0-9.e-]*,"top":\[\[[0-9]*,' | sed 's/{"id":\([0-9]*\),.*"top":\[\[\([0-9]*\),/\1 \2/' | awk '$1 == $2' | wc -l)
[ "$n" = 20 ] && ok || bad "run --logprobs: $n greedy entries of 20"
echo "$out" | grep -q '"logprobs":\[{"id":143189,"logprob":-' && ok || bad "run --logprobs first: $out"
expect_fail "$BIN" run -m "$M" -p hi -n 1 --logprobs 2
expect_fail "$BIN" run -m "$M" -p hi -n 1 --json --logprobs 65
# encode -> embeddings API example gives the same tokens as run
"$BIN" encode -m "$M" "$S/images/rgb_400x300.png" --out "$T/f.bin" && ok || bad encode
ex=$("$BUILD/example_embed_generate" -m "$M" --features "$T/f.bin" -p "What is this?" -n 12 | tr -d ' []')
rn=$("$BIN" run -m "$M" -i "$S/images/rgb_400x300.png" -p "What is this?" -n 12 --temp 0 --json | grep -o '"generated_ids":\[[^]]*\]' | sed 's/.*\[//; s/\]//')
[ -n "$ex" ] && [ "$ex" = "$rn" ] && ok || bad "embeddings example ($ex) vs run ($rn)"
# video budget: --video-max-pixels shrinks the frames alike in preprocess and run (3 pads, not 18)
out=$("$BIN" preprocess --json --video "$S/videos/tiny_clip_96x64_4fps" --video-fps 4 --video-max-pixels 10240)
echo "$out" | grep -q '"resized_width":32,"resized_height":32,.*"tokens":3' && ok || bad "preprocess --video-max-pixels: $out"
n=$("$BIN" run -m "$M" --video "$S/videos/tiny_clip_96x64_4fps" --video-fps 4 --video-max-pixels 10240 -p "What?" -n 1 --json | grep -o '"prompt_ids":\[[^]]*\]' | tr ',' '\n' | grep -c '^151656$')
[ "$n" = 3 ] && ok || bad "run --video-max-pixels: $n video pads"
# EXIF orientation: an 11x3 PNG whose eXIf says "rotate 90 counter-clockwise" (a fuzz seed)
tail -c +3 "$(dirname "$0")/../fuzz/corpus/image/png_exif_orient8" > "$T/orient8.png"
out=$("$BIN" preprocess "$T/orient8.png")
echo "$out" | grep -q ': 3x11 -> ' && ok || bad "EXIF orientation not applied: $out"
out=$("$BIN" preprocess --ignore-exif "$T/orient8.png")
echo "$out" | grep -q ': 11x3 -> ' && ok || bad "--ignore-exif: $out"
# ... and as the frames of a frame directory
mkdir -p "$T/o8d" && for i in 0 1 2 3; do cp "$T/orient8.png" "$T/o8d/f$i.png"; done
out=$("$BIN" preprocess --json --video "$T/o8d" --video-fps 2)
echo "$out" | grep -q '"resized_width":32,"resized_height":128' && ok || bad "EXIF frames: $out"
out=$("$BIN" preprocess --json --video "$T/o8d" --video-fps 2 --ignore-exif)
echo "$out" | grep -q '"resized_width":128,"resized_height":32' && ok || bad "--ignore-exif frames: $out"
# --resample: pil is the images' default; torchvision's resize gives other features (400x300 is resized)
"$BIN" encode -m "$M" "$S/images/rgb_400x300.png" --resample pil --out "$T/fp.bin" && cmp -s "$T/f.bin" "$T/fp.bin" && ok || bad "encode --resample pil differs from the default"
"$BIN" encode -m "$M" "$S/images/rgb_400x300.png" --resample torchvision --out "$T/ft.bin" && ! cmp -s "$T/f.bin" "$T/ft.bin" && ok || bad "encode --resample torchvision equals pil"
expect_fail "$BIN" encode -m "$M" "$S/images/rgb_400x300.png" --resample bilinear --out "$T/fx.bin"
# transparency: an RGBA PNG (half-transparent red) is composited onto white by default and keeps
# its stored colours with --drop-alpha; an opaque RGB image is the same either way
"$BIN" encode -m "$M" "$S/images/rgb_400x300.png" --drop-alpha --out "$T/fd.bin" && cmp -s "$T/f.bin" "$T/fd.bin" && ok || bad "encode --drop-alpha changed an opaque image"
if command -v ffmpeg >/dev/null; then
    ffmpeg -loglevel error -f lavfi -i "color=c=red@0.5:s=64x64,format=rgba" -frames:v 1 "$T/rgba.png"
    "$BIN" encode -m "$M" "$T/rgba.png" --out "$T/fa1.bin" && "$BIN" encode -m "$M" "$T/rgba.png" --drop-alpha --out "$T/fa2.bin" && ! cmp -s "$T/fa1.bin" "$T/fa2.bin" && ok || bad "encode --drop-alpha equals the composited image"
fi
# stop string: the stop text is not emitted
full=$("$BIN" run -m "$S/model" -p "Hi" -n 8 --temp 0 --json | sed 's/.*"text":"\([^"]*\)".*/\1/')
# streaming text output equals the JSON text
stream=$("$BIN" run -m "$M" -p "Hi" -n 8 --temp 0 -q)
[ -n "$stream" ] && ok || bad "streamed text is empty"
# video: a frame directory and an MP4 made from the same frames give the golden tokens
vwant=$(tr -d ' \n' < "$S/golden/tiny_video_frames.json" | grep -o '"generated_ids":\[[^]]*\]' | head -1 | sed 's/.*\[//; s/\]//')
got=$("$BIN" run -m "$M" --video "$S/videos/tiny_clip_96x64_4fps" --video-fps 4 -p "What happens in this video?" -n 20 --temp 0 --json | grep -o '"generated_ids":\[[^]]*\]' | sed 's/.*\[//; s/\]//')
[ -n "$vwant" ] && [ "$got" = "$vwant" ] && ok || bad "video frames dir: $got vs $vwant"
expect_fail "$BIN" run -m "$M" --video "$S/videos/tiny_clip_96x64_4fps"   # no --video-fps for a directory
out=$("$BIN" preprocess --json --video "$S/videos/tiny_clip_96x64_4fps" --video-fps 4)
echo "$out" | grep -q '"frame_indices":\[0,2,4,7,9\].*"grid_thw":\[3,4,6\],"timestamps":\[0.25,1.375,2.25\],"tokens":18' && ok || bad "preprocess --video: $out"
if command -v ffmpeg >/dev/null; then
    ffmpeg -loglevel error -framerate 4 -i "$S/videos/tiny_clip_96x64_4fps/frame_%04d.png" -c:v libx264rgb -qp 0 -pix_fmt rgb24 "$T/clip.mp4"
    out=$("$BIN" run -m "$M" --video "$T/clip.mp4" -p "What happens in this video?" -n 20 --temp 0 --json)
    got=$(echo "$out" | grep -o '"generated_ids":\[[^]]*\]' | sed 's/.*\[//; s/\]//')
    [ "$got" = "$vwant" ] && ok || bad "video mp4: $got vs $vwant"
    echo "$out" | grep -q '"timestamps":\[0.25,1.375,2.25\]' && ok || bad "video timestamps: $out"
    head -c 3000 "$T/clip.mp4" > "$T/cut.mp4"
    expect_fail "$BIN" run -m "$M" --video "$T/cut.mp4"
else
    echo "SKIP: ffmpeg CLI not found, MP4 checks skipped" >&2
fi
echo "not a video" > "$T/x.mp4"
expect_fail "$BIN" run -m "$M" --video "$T/x.mp4"
# bad input
expect_fail "$BIN" info -m "$T"                        # not a model directory
expect_fail "$BIN" info -m "$T/nope"
expect_fail "$BIN" info -m no-such-org/no-such-model
expect_fail "$BIN" run -m "$M" -n abc
expect_fail "$BIN" run -m "$M" --temp -1
expect_fail "$BIN" frobnicate
echo "this is not a png" > "$T/x.png"
expect_fail "$BIN" run -m "$M" -i "$T/x.png"
expect_fail "$BIN" preprocess "$T/x.png"
head -c 100 "$S/images/rgb_400x300_q90.jpg" > "$T/trunc.jpg"
expect_fail "$BIN" run -m "$M" -i "$T/trunc.jpg"
expect_fail "$BIN" run -m "$M" -c 16 -p "this prompt is longer than a sixteen token context window for sure, yes"
expect_fail "$BIN" encode -m "$M" "$S/images/rgb_64x64.png"   # no --out
# speed options: 16-bit KV cache, bf16 dot products, quantised weights (with an image); the
# sampling options reach chat too (stdin closed: one prompt-less session ends cleanly)
for opt in "--kv bf16" "--kv f16" "--bf16-dot" "--quant q8" "--quant q4" "--quant q8 --kv bf16 --bf16-dot"; do
    # shellcheck disable=SC2086
    out=$("$BIN" run -m "$M" -i "$S/images/rgb_64x64.png" -p "Describe this image." -n 6 --temp 0 --json -t 2 $opt) &&
        echo "$out" | grep -q '"generated_ids":\[[0-9]*,[0-9]*,[0-9]*,[0-9]*,[0-9]*,[0-9]*\]' && ok || bad "run $opt: $out"
done
expect_fail "$BIN" run -m "$M" -p "x" --kv fp8
expect_fail "$BIN" run -m "$M" -p "x" --load huge
expect_fail "$BIN" run -m "$M" -p "x" --quant-vision      # without --quant
# load modes and the quantisation cache give the same tokens as the plain runs
base=$("$BIN" run -m "$M" -p "Describe a harbour." -n 6 --temp 0 --json | grep -o '"generated_ids":\[[^]]*\]')
for opt in "--load mmap" "--load copy" "--load auto"; do
    # shellcheck disable=SC2086
    got=$("$BIN" run -m "$M" -p "Describe a harbour." -n 6 --temp 0 --json $opt | grep -o '"generated_ids":\[[^]]*\]')
    [ -n "$base" ] && [ "$got" = "$base" ] && ok || bad "run $opt: $got vs $base"
done
q8=$("$BIN" run -m "$M" -p "Describe a harbour." -n 6 --temp 0 --json --quant q8 --quant-vision | grep -o '"generated_ids":\[[^]]*\]')
for i in 1 2; do
    got=$(QVL_CACHE_DIR="$T/qc" "$BIN" run -m "$M" -p "Describe a harbour." -n 6 --temp 0 --json --quant q8 --quant-vision --quant-cache | grep -o '"generated_ids":\[[^]]*\]')
    [ -n "$q8" ] && [ "$got" = "$q8" ] && ok || bad "quant cache run $i: $got vs $q8"
done
ls "$T"/qc/*-q8v.qvlq > /dev/null 2>&1 && ok || bad "no cache file in $T/qc"
QVL_CACHE_DIR="$T/qc" "$BIN" info -m "$M" --json --quant q8 --quant-vision --quant-cache | tr -d ' \t\n' | grep -q '"used":true' && ok || bad "info: cache not used"
expect_fail "$BIN" run -m "$M" -p "x" --quant q3
# no -m and no hub copy: a random-weight demo model, generated once under qvl's cache directory
# ($QVL_CACHE_DIR first, then $XDG_CACHE_HOME/qvl (absolute only), then ~/.cache/qvl)
demo_run() { env -u QVL_CACHE_DIR -u XDG_CACHE_HOME -u HF_HOME -u HF_HUB_CACHE "$@" "$BIN" run -p "Hi" -n 3 --temp 0 --json 2>"$T/demo.err" | grep -o '"generated_ids":\[[^]]*\]'; }
mkdir -p "$T/home"
out=$(demo_run HOME="$T/home") && echo "$out" | grep -q '^"generated_ids":\[[0-9]*,[0-9]*,[0-9]*\]$' && ok || bad "demo run: $out $(cat "$T/demo.err")"
grep -q "RANDOM-WEIGHT demo model" "$T/demo.err" && grep -q "generating the demo model" "$T/demo.err" && ok || bad "demo run messages: $(cat "$T/demo.err")"
[ -f "$T/home/.cache/qvl/demo-tiny/config.json" ] && ok || bad "demo model not in ~/.cache/qvl/demo-tiny"
again=$(demo_run HOME="$T/home") && [ "$again" = "$out" ] && ! grep -q "generating" "$T/demo.err" && ok || bad "second demo run regenerated or differs"
demo_run HOME="$T/home" QVL_CACHE_DIR="$T/qcd" > /dev/null && [ -f "$T/qcd/demo-tiny/config.json" ] && ok || bad "demo model not under QVL_CACHE_DIR"
demo_run HOME="$T/home" XDG_CACHE_HOME="$T/xdg" > /dev/null && [ -f "$T/xdg/qvl/demo-tiny/config.json" ] && ok || bad "demo model not under XDG_CACHE_HOME"
"$BIN" chat -m "$M" --top-k 5 --top-p 0.9 --stop "." --kv bf16 < /dev/null > /dev/null 2>&1 && ok || bad "chat with sampling options"
# bench (not timed here): one repetition on the tiny model gives the documented JSON fields, one
# bandwidth sample per side of each decode repetition; bad options fail cleanly
out=$("$BIN" bench -m "$M" --reps 1 --no-large --json -t 2 2>/dev/null)
for key in load_ms vision_ms_400x300 vision_ms_1024x768 prefill_tok_s decode_tok_s ttft_ms peak_rss_bytes \
           mem_read_gbs decode_bandwidth_fraction decode_bandwidth_fraction_vs_highest; do
    echo "$out" | grep -q "\"$key\":" && ok || bad "bench --json: no $key in $out"
done
echo "$out" | grep -q '"mem_read_gbs_samples":\[[0-9.e+-]*,[0-9.e+-]*,[0-9.e+-]*\]' && ok || bad "bench --json: samples: $out"
echo "$out" | grep -q '"decode_long_tok_s":null' && ok || bad "bench --no-large --json: decode_long_tok_s not null: $out"
# without --no-large: the 1024x768 image and the decode at a 1536-token context (seconds in the
# release build; about a minute under the sanitizers, which skip it)
if [ "${QVL_SANITIZED:-0}" != "1" ]; then
    out=$("$BIN" bench -m "$M" --reps 1 --json -t 2 2>/dev/null)
    for key in vision_ms_1024x768 decode_long_tok_s; do
        echo "$out" | grep -q "\"$key\":[0-9]" && ok || bad "bench --json: no $key figure in $out"
    done
    echo "$out" | grep -q '"decode_long_ctx":1536' && ok || bad "bench --json: decode_long_ctx: $out"
fi
expect_fail "$BIN" bench -m "$M" --reps 0
expect_fail "$BIN" bench -m "$T/nowhere"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
