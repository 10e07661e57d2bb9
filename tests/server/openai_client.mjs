// openai_client.mjs - `qvl serve` driven by the official openai npm client (Node.js 20).
// Environment (set by test_server.sh): QVL_TEST_PORT, QVL_TEST_KEY, QVL_TEST_DIR holding
// img.b64 (a PNG as base64), prompt.txt, expected.json (`qvl run --json` greedy output for that
// image and prompt, max_tokens in expected.max_tokens), stop.txt and expected_stop.json (the same
// with --stop). Prints "N passed, N failed" and exits non-zero on any failure.
import OpenAI from 'openai';
import fs from 'node:fs';
import path from 'node:path';

const dir = process.env.QVL_TEST_DIR;
const read = (f) => fs.readFileSync(path.join(dir, f), 'utf8');
const exp = JSON.parse(read('expected.json'));
const expStop = JSON.parse(read('expected_stop.json'));
const stop = read('stop.txt');
const prompt = read('prompt.txt');
const url = 'data:image/png;base64,' + read('img.b64').trim();
const maxTokens = exp.max_tokens;

let passed = 0, failed = 0;
function check(cond, name, detail) {
    if (cond) passed++;
    else { failed++; console.log(`FAIL: ${name}${detail !== undefined ? ': ' + JSON.stringify(detail) : ''}`); }
}

const client = new OpenAI({
    baseURL: `http://127.0.0.1:${process.env.QVL_TEST_PORT}/v1`,
    apiKey: process.env.QVL_TEST_KEY, maxRetries: 0, timeout: 60000,
});
const messages = [{ role: 'user', content: [
    { type: 'image_url', image_url: { url } }, { type: 'text', text: prompt } ] }];

// models
const models = await client.models.list();
check(models.data.length === 1 && typeof models.data[0].id === 'string', 'models.list', models.data);
const model = models.data[0].id;

// non-streamed, greedy: same text as `qvl run`
const r = await client.chat.completions.create({ model, messages, max_tokens: maxTokens, temperature: 0 });
check(r.object === 'chat.completion' && r.id.startsWith('chatcmpl-'), 'completion object', r.object);
check(r.model === model, 'completion model');
check(r.choices.length === 1 && r.choices[0].message.role === 'assistant', 'one assistant choice');
check(r.choices[0].message.content === exp.text, 'greedy text equals qvl run', [r.choices[0].message.content, exp.text]);
check(r.choices[0].finish_reason === exp.finish_reason, 'finish_reason', r.choices[0].finish_reason);
check(r.usage.prompt_tokens === exp.prompt_ids.length, 'usage.prompt_tokens', [r.usage.prompt_tokens, exp.prompt_ids.length]);
check(r.usage.completion_tokens === exp.generated_ids.length, 'usage.completion_tokens', [r.usage.completion_tokens, exp.generated_ids.length]);
check(r.usage.total_tokens === r.usage.prompt_tokens + r.usage.completion_tokens, 'usage.total_tokens');

// streamed, with usage
const s = await client.chat.completions.create({ model, messages, max_tokens: maxTokens, temperature: 0,
    stream: true, stream_options: { include_usage: true } });
let text = '', finish = null, usage = null, role = null, chunks = 0;
for await (const ch of s) {
    chunks++;
    check(ch.object === 'chat.completion.chunk', 'chunk object', ch.object);
    if (ch.usage) usage = ch.usage;
    for (const c of ch.choices) {
        if (c.delta.role) role = c.delta.role;
        if (c.delta.content) text += c.delta.content;
        if (c.finish_reason) finish = c.finish_reason;
    }
}
check(chunks >= 3, 'several chunks', chunks);
check(role === 'assistant', 'stream role');
check(text === exp.text, 'streamed text equals qvl run', [text, exp.text]);
check(finish === exp.finish_reason, 'stream finish_reason', finish);
check(usage && usage.prompt_tokens === exp.prompt_ids.length && usage.completion_tokens === exp.generated_ids.length,
      'stream usage', usage);

// stop strings (non-streamed and streamed)
const rs = await client.chat.completions.create({ model, messages, max_tokens: maxTokens, temperature: 0, stop: [stop, 'zzzz-never'] });
check(rs.choices[0].message.content === expStop.text, 'stop: text equals qvl run --stop', [rs.choices[0].message.content, expStop.text]);
check(rs.choices[0].finish_reason === 'stop', 'stop: finish_reason stop', rs.choices[0].finish_reason);
check(!rs.choices[0].message.content.includes(stop), 'stop string not emitted');
const ss = await client.chat.completions.create({ model, messages, max_tokens: maxTokens, temperature: 0, stop, stream: true });
let stext = '', sfinish = null;
for await (const ch of ss)
    for (const c of ch.choices) { if (c.delta.content) stext += c.delta.content; if (c.finish_reason) sfinish = c.finish_reason; }
check(stext === expStop.text && sfinish === 'stop', 'stream stop', [stext, sfinish]);

// length limit
const rl = await client.chat.completions.create({ model, messages, max_tokens: 2, temperature: 0 });
check(rl.choices[0].finish_reason === 'length' && rl.usage.completion_tokens === 2, 'max_tokens 2 gives length', rl.usage);

// errors through the client's typed exceptions
try {
    await client.chat.completions.create({ model, messages, n: 2 });
    check(false, 'n=2 refused');
} catch (e) { check(e instanceof OpenAI.BadRequestError && e.status === 400, 'n=2 gives 400', e.status); }
try {
    await client.chat.completions.create({ model, messages: [{ role: 'user', content: [
        { type: 'image_url', image_url: { url: 'https://example.com/cat.png' } } ] }] });
    check(false, 'remote URL refused');
} catch (e) { check(e.status === 400 && /remote/.test(e.message), 'remote URL gives 400', e.message); }
const bad = new OpenAI({ baseURL: client.baseURL, apiKey: 'wrong-key', maxRetries: 0 });
try {
    await bad.models.list();
    check(false, 'wrong key refused');
} catch (e) { check(e instanceof OpenAI.AuthenticationError && e.status === 401, 'wrong key gives 401', e.status); }

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
