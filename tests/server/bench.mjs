// bench.mjs - benchmark of `qvl serve` (a tool, not a test): starts the server on loopback,
// sends short image requests (greedy, max_tokens 8) with 1, 2 and 4 concurrent clients and
// prints requests/s, p50/p95 latency, and the server's overhead per request: client latency
// minus the engine time the server reports (prompt evaluation + generation) and queue wait.
// Usage: node bench.mjs QVL_SERVER_BIN MODEL_DIR IMAGE [--slots N] [--requests N] [-t N]
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';

const [bin, model, image, ...rest] = process.argv.slice(2);
if (!image) { console.error('usage: node bench.mjs QVL_SERVER_BIN MODEL_DIR IMAGE [--slots N] [--requests N] [-t N]'); process.exit(2); }
const opt = (k, d) => { const i = rest.indexOf(k); return i >= 0 ? +rest[i + 1] : d; };
const slots = opt('--slots', 2), nreq = opt('--requests', 40), threads = opt('-t', 1);
const body = JSON.stringify({ max_tokens: 8, temperature: 0, messages: [{ role: 'user', content: [
    { type: 'image_url', image_url: { url: 'data:image/png;base64,' + fs.readFileSync(image).toString('base64') } },
    { type: 'text', text: 'Describe this image.' }] }] });

const srv = spawn(bin, ['-m', model, '--port', '0', '--slots', String(slots), '-t', String(threads), '--queue', '64'],
                  { stdio: ['ignore', 'ignore', 'pipe'] });
const port = await new Promise((resolve, reject) => {
    let log = '';
    srv.stderr.on('data', (d) => {
        log += d;
        const m = log.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
        if (m && /ready/.test(log)) resolve(+m[1]);
    });
    srv.on('exit', () => reject(new Error('server exited: ' + log)));
});
const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
function post() {
    return new Promise((resolve, reject) => {
        const t0 = performance.now();
        const rq = http.request({ host: '127.0.0.1', port, path: '/v1/chat/completions', method: 'POST', agent,
            headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
            let data = '';
            res.on('data', (c) => (data += c));
            res.on('end', () => {
                const ms = performance.now() - t0;
                if (res.statusCode !== 200) return reject(new Error(`status ${res.statusCode}: ${data}`));
                const t = JSON.parse(data).timings;
                resolve({ ms, overhead: ms - t.queued_ms - t.prompt_ms - t.generation_ms, engine: t.prompt_ms + t.generation_ms });
            });
        });
        rq.on('error', reject);
        rq.end(body);
    });
}
const pct = (a, p) => a[Math.min(a.length - 1, Math.floor(p / 100 * a.length))];
await post(); // warm-up
console.log(`qvl serve bench: ${slots} slot(s) x ${threads} thread(s), ${nreq} requests per row, image ${image}`);
console.log('clients  req/s   p50 ms   p95 ms   engine ms (mean)   overhead ms (mean, p95)');
for (const conc of [1, 2, 4]) {
    const res = [];
    let next = 0;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: conc }, async () => {
        while (next < nreq) { next++; res.push(await post()); }
    }));
    const wall = (performance.now() - t0) / 1000;
    const lat = res.map((r) => r.ms).sort((a, b) => a - b);
    const ov = res.map((r) => r.overhead).sort((a, b) => a - b);
    const mean = (a) => a.reduce((x, y) => x + y, 0) / a.length;
    console.log(`${String(conc).padStart(7)}  ${(res.length / wall).toFixed(1).padStart(5)}  ${pct(lat, 50).toFixed(1).padStart(7)}  ${pct(lat, 95).toFixed(1).padStart(7)}  ${mean(res.map((r) => r.engine)).toFixed(1).padStart(17)}  ${mean(ov).toFixed(2).padStart(13)}, ${pct(ov, 95).toFixed(2)}`);
}
agent.destroy();
srv.kill('SIGTERM');
