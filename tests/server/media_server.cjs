// media_server.cjs DIR - a loopback HTTP server for the remote-media tests: prints its port,
// then serves the files of DIR by name, and these routes:
//   /redirect/NAME   302 to /NAME            /to-file   302 to file:///etc/passwd
//   /missing         404                     /slow      headers, then never a body
//   /big-length      Content-Length 100 MB, no body
//   /big-chunked     65 MiB of zeros, chunked (no length given)
//   /empty           200 with an empty body  /not-image  200 with a line of text
"use strict";
const http = require("http");
const fs = require("fs");
const path = require("path");
const dir = process.argv[2];

const server = http.createServer((req, res) => {
    const url = decodeURIComponent(req.url.split("?")[0]);
    if (url.startsWith("/redirect/")) {
        res.writeHead(302, { Location: "/" + url.slice(10) });
        return res.end();
    }
    if (url === "/to-file") {
        res.writeHead(302, { Location: "file:///etc/passwd" });
        return res.end();
    }
    if (url === "/slow") {
        res.writeHead(200, { "Content-Type": "image/png" });
        res.flushHeaders();
        return; // never finishes
    }
    if (url === "/big-length") {
        res.writeHead(200, { "Content-Length": "100000000" });
        res.flushHeaders();
        return; // the client should give up on the length alone
    }
    if (url === "/big-chunked") {
        res.writeHead(200, { "Content-Type": "application/octet-stream" });
        const mb = Buffer.alloc(1 << 20);
        let left = 65;
        const more = () => {
            while (left > 0) {
                left--;
                if (!res.write(mb)) return res.once("drain", more);
            }
            res.end();
        };
        res.on("error", () => {});
        return more();
    }
    if (url === "/not-image") {
        res.writeHead(200, { "Content-Type": "image/png" });
        return res.end("this is not an image\n");
    }
    if (url === "/empty") {
        res.writeHead(200, { "Content-Length": "0" });
        return res.end();
    }
    const name = path.basename(url);
    const file = path.join(dir, name);
    if (!name || !fs.existsSync(file)) {
        res.writeHead(404);
        return res.end("not found");
    }
    const body = fs.readFileSync(file);
    res.writeHead(200, { "Content-Length": String(body.length) });
    res.end(body);
});
server.on("clientError", () => {});
server.listen(0, "127.0.0.1", () => {
    process.stdout.write(server.address().port + "\n");
});
