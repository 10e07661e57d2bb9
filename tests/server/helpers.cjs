// helpers.cjs - small tools for test_server.sh (plain Node.js, no packages):
//   node helpers.cjs get 'EXPR' < file.json   print EXPR evaluated with d = the parsed JSON
//   node helpers.cjs bigpng                    base64 of a PNG whose header claims 100000x100000
//   node helpers.cjs sse < stream.txt          check SSE framing; print the JSON summary
//   node helpers.cjs substr TEXT FROM LEN      code-point substring of TEXT
'use strict';
const fs = require('fs');
const [cmd, ...args] = process.argv.slice(2);

function crc32(buf) {
    let c, crc = 0xffffffff;
    for (const b of buf) {
        c = (crc ^ b) & 0xff;
        for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
        crc = (crc >>> 8) ^ c;
    }
    return (crc ^ 0xffffffff) >>> 0;
}
function chunk(type, data) {
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4); crc.writeUInt32BE(crc32(td));
    return Buffer.concat([len, td, crc]);
}

if (cmd === 'get') {
    const d = JSON.parse(fs.readFileSync(0, 'utf8'));
    const v = eval(args[0]);
    process.stdout.write(typeof v === 'string' ? v : JSON.stringify(v));
} else if (cmd === 'bigpng') {
    const ihdr = Buffer.alloc(13);
    ihdr.writeUInt32BE(100000, 0); ihdr.writeUInt32BE(100000, 4);
    ihdr[8] = 8; ihdr[9] = 2; // 8-bit RGB
    const sig = Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]);
    const idat = chunk('IDAT', require('zlib').deflateSync(Buffer.alloc(1000)));
    const png = Buffer.concat([sig, chunk('IHDR', ihdr), idat, chunk('IEND', Buffer.alloc(0))]);
    process.stdout.write(png.toString('base64'));
} else if (cmd === 'sse') {
    // Every event is one "data: ..." line followed by a blank line; the last is [DONE];
    // ": keep-alive" comment events are allowed anywhere before it.
    const raw = fs.readFileSync(0, 'utf8');
    const out = {ok: true, why: '', events: 0, text: '', role: null, finish: null, usage: null,
                 ids: new Set(), objects: new Set(), logprobs: []};
    if (!raw.endsWith('\n\n')) { out.ok = false; out.why = 'stream does not end with a blank line'; }
    const events = raw.split('\n\n').filter((e) => !e.startsWith(':')); // drop comments
    events.pop();
    events.forEach((ev, i) => {
        if (!ev.startsWith('data: ') || ev.includes('\n')) { out.ok = false; out.why = `bad event ${i}: ${ev.slice(0, 80)}`; return; }
        const p = ev.slice(6);
        out.events++;
        if (p === '[DONE]') { if (i !== events.length - 1) { out.ok = false; out.why = '[DONE] is not last'; } return; }
        if (i === events.length - 1) { out.ok = false; out.why = 'last event is not [DONE]'; }
        const j = JSON.parse(p);
        out.ids.add(j.id); out.objects.add(j.object);
        if (j.usage) out.usage = j.usage;
        for (const c of j.choices) {
            if (c.delta.role) out.role = c.delta.role;
            if (c.delta.content) out.text += c.delta.content;
            if (c.finish_reason) out.finish = c.finish_reason;
            if (c.logprobs) out.logprobs.push(...c.logprobs.content);
        }
    });
    out.ids = [...out.ids]; out.objects = [...out.objects];
    process.stdout.write(JSON.stringify(out));
} else if (cmd === 'substr') {
    process.stdout.write(Array.from(args[0]).slice(+args[1], +args[1] + +args[2]).join(''));
} else {
    console.error('usage: helpers.cjs get|bigpng|sse|substr');
    process.exit(2);
}
