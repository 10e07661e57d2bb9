/* fetch.h - downloads of http(s) image and video URLs (libcurl): `qvl run -i URL` and the
 * server's image_url / video_url parts under --allow-remote-media. Part of the server library,
 * which the CLI links; libqvl itself does no networking. */
#ifndef QVL_FETCH_H
#define QVL_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* True when s starts with http:// or https:// (case-insensitive scheme). */
bool media_is_remote(const char *s);

/* Once per process, before any other thread starts (libcurl's global setup is not
 * thread-safe). Returns false when downloads are not available (built without libcurl, or its
 * setup failed); media_fetch then fails with a message. */
bool media_fetch_init(void);

/* GET url into a malloc'd buffer (*out, *n; free with free()). http and https only, also
 * across redirects (at most 5); at most cap bytes; timeout_s for the whole transfer. Returns
 * 0; -1 with a message in err (network or HTTP error, empty body); -2 when the body is larger
 * than cap; -3 out of memory. */
int media_fetch(const char *url, size_t cap, long timeout_s, uint8_t **out, size_t *n, char *err,
                size_t err_len);

#endif
