// soak.mjs - sustained-load test of `qvl serve` on loopback (not part of the default suite).
//
//   node tests/server/soak.mjs QVL_SERVER_BIN MODEL_DIR IMAGE.png [SECONDS=60] [CLIENTS=4]
//
// Starts the server (2 slots, port chosen by the kernel), then CLIENTS loops send a mix of valid
// requests (text, image data URI, streamed and not, with stop strings) and malformed ones (bad
// JSON, wrong types, bad base64, unknown routes, wrong methods, oversized bodies, a huge image
// header, aborted streams) for SECONDS. Every response must have the expected status. Reports
// requests served, responses by status, unexpected outcomes, whether the server stayed up (a
// crash fails the run) and its resident memory at start and end (drift is printed).
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';

const [bin, model, image, secsArg, clientsArg] = process.argv.slice(2);
if (!bin || !model || !image) {
    console.error('usage: node soak.mjs QVL_SERVER_BIN MODEL_DIR IMAGE.png [SECONDS] [CLIENTS]');
    process.exit(2);
}
const seconds = Number(secsArg || 60), clients = Number(clientsArg || 4);
const png = readFileSync(image).toString('base64');

function rssKb(pid) {
    try {
        const s = readFileSync(`/proc/${pid}/status`, 'utf8');
        return Number((s.match(/VmRSS:\s+(\d+)/) || [])[1] || 0);
    } catch {
        return -1;
    }
}

// a PNG whose IHDR claims 100000 x 100000 (the CRC is not checked before the size limit)
function hugePng() {
    const b = Buffer.from('89504e470d0a1a0a0000000d49484452000186a0000186a00802000000000000000000', 'hex');
    return b.toString('base64');
}

const server = spawn(bin, ['-m', model, '--port', '0', '--slots', '2', '-t', '1',
                           '--max-body-bytes', '2000000'], { stdio: ['ignore', 'ignore', 'pipe'] });
let port = 0, log = '';
server.stderr.on('data', (d) => {
    log += d.toString();
    const m = log.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
    if (m && !port) port = Number(m[1]);
});
let exited = null;
server.on('exit', (code, sig) => { exited = { code, sig }; });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
for (let i = 0; i < 300 && !port; i++) await sleep(100);
if (!port) {
    console.error('server did not start:\n' + log.slice(-2000));
    process.exit(1);
}
const base = `http://127.0.0.1:${port}`;
for (let i = 0; i < 100; i++) {
    try {
        const r = await fetch(`${base}/health`);
        if (r.ok) break;
    } catch {}
    await sleep(100);
}

const chat = (body) => ({ method: 'POST', headers: { 'content-type': 'application/json' }, body });
const kinds = [
    ['text', 200, () => chat(JSON.stringify({ messages: [{ role: 'user', content: 'Hello' }], max_tokens: 6 }))],
    ['image', 200, () => chat(JSON.stringify({ messages: [{ role: 'user', content: [
        { type: 'image_url', image_url: { url: `data:image/png;base64,${png}` } },
        { type: 'text', text: 'What is this?' }] }], max_tokens: 6, temperature: 0 }))],
    ['stream', 200, () => chat(JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }], max_tokens: 6, stream: true }))],
    ['stop', 200, () => chat(JSON.stringify({ messages: [{ role: 'user', content: 'Count' }], max_tokens: 8, stop: ['a', 'e'] }))],
    ['bad_json', 400, () => chat('{"messages": [')],
    ['bad_type', 400, () => chat(JSON.stringify({ messages: 'hello' }))],
    ['bad_base64', 400, () => chat(JSON.stringify({ messages: [{ role: 'user', content: [
        { type: 'image_url', image_url: { url: 'data:image/png;base64,@@@@' } }] }] }))],
    ['huge_image', 400, () => chat(JSON.stringify({ messages: [{ role: 'user', content: [
        { type: 'image_url', image_url: { url: `data:image/png;base64,${hugePng()}` } }] }] }))],
    ['too_big', 413, () => chat('x'.repeat(2100000))],
    ['n2', 400, () => chat(JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }], n: 2 }))],
];
const routes = [['not_found', 404, '/v1/nothing', { method: 'GET' }], ['method', 405, '/v1/chat/completions', { method: 'GET' }]];

const counts = {}, unexpected = {};
let served = 0, aborted = 0;
const t_end = Date.now() + seconds * 1000;
const rss0 = rssKb(server.pid);

async function one(k) {
    let name, want, url = `${base}/v1/chat/completions`, init;
    if (k < kinds.length) [name, want, init] = [kinds[k][0], kinds[k][1], kinds[k][2]()];
    else [name, want, url, init] = [routes[k - kinds.length][0], routes[k - kinds.length][1],
                                     base + routes[k - kinds.length][2], routes[k - kinds.length][3]];
    const ctl = new AbortController();
    const abortMid = name === 'stream' && Math.random() < 0.3;
    try {
        const r = await fetch(url, { ...init, signal: ctl.signal });
        if (abortMid) {
            ctl.abort();
            aborted++;
        } else {
            await r.text();
        }
        counts[r.status] = (counts[r.status] || 0) + 1;
        // 503 (queue full) is an allowed answer under load
        if (r.status !== want && r.status !== 503) unexpected[`${name}:${r.status}`] = (unexpected[`${name}:${r.status}`] || 0) + 1;
        served++;
    } catch (e) {
        if (!abortMid) unexpected[`${name}:${e.name}`] = (unexpected[`${name}:${e.name}`] || 0) + 1;
    }
}

await Promise.all(Array.from({ length: clients }, async () => {
    while (Date.now() < t_end && !exited) await one(Math.floor(Math.random() * (kinds.length + routes.length)));
}));
await sleep(1000);
const rss1 = rssKb(server.pid);
let healthy = false;
try { healthy = (await fetch(`${base}/health`)).ok; } catch {}
server.kill('SIGTERM');
for (let i = 0; i < 100 && !exited; i++) await sleep(100);

const result = { seconds, clients, served, aborted_streams: aborted, by_status: counts, unexpected,
                 crashed: Boolean((exited && exited.code !== 0 && exited.code !== null) || (exited && exited.sig && exited.sig !== 'SIGTERM')),
                 healthy_at_end: healthy, rss_kb_start: rss0, rss_kb_end: rss1, rss_drift_kb: rss1 - rss0,
                 exit: exited };
console.log(JSON.stringify(result));
process.exit(!healthy || Object.keys(unexpected).length ? 1 : 0);
