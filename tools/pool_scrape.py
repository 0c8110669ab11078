# tools/pool_scrape.py: one scrape of a libsock++ server's Prometheus exposition, shared by
# tools/pool_record and tools/pooltop, which import it from beside them (so it goes in the Bazel
# data of whatever runs them).
import http.client
import signal
import urllib.error
import urllib.parse
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


# The most bytes of a body read: more fails the sample, so that a server that streams without end
# cannot fill memory before the deadline. engine/metrics.cc writes per shard 28 families of one
# line, the loop's histogram (55 lines: 26 octaves, 2 buckets each, +Inf, _sum and _count) and,
# profiling on, 5 histograms of 271 lines in all (26, 26, 30, 10 and 36 octaves): about 29 KB
# with every value at 20 digits (1.8 MiB for 64 shards), besides ~7 KB of HELP, TYPE and TLS
# lines for the whole process. 64 MiB holds over 2,000 such shards: 30 times a 64-core
# machine's one per core.
MAX_BODY = 64 << 20
# The most lines of a body parsed: more fails the sample. The cap on bytes alone does not bound
# memory: prometheus_client keeps ~500 bytes per sample, and 64 MiB of short lines is 2.5
# million of them (1,000,000 took 520 MB and 5.7 s). A shard writes 354 lines (above), the
# process ~100 (HELP, TYPE, TLS); MAX_SHARDS is more shards than any two-socket machine has CPUs
# today (2 x 192 cores x 2 threads: 768), a shard per CPU being the servers' default. At the
# cap a body of short lines parses in ~160 MB and 2.4 s.
MAX_SHARDS = 1024
MAX_LINES = MAX_SHARDS * 360 + 1000


class ScrapeError(Exception):
    """Why a scrape gave no samples, in one line for the user."""


# A BaseException, like KeyboardInterrupt: no `except Exception` on the way out of urllib may
# swallow it and so let the scrape go on.
class _Timeout(BaseException):
    pass


# True while a scrape's SIGALRM may raise _Timeout: a SIGALRM handled after the scrape ended,
# or a second one, must not abort what runs then.
_armed = False


def _alarm(signum, frame):
    global _armed
    if _armed:
        _armed = False
        raise _Timeout


def check_url(url):
    """Raises ScrapeError unless url is one scrape() reads: http:// or https://. urllib opens
    file: and data: URLs too, as responses that are not HTTP (no status, no length): the tools
    call this on their --url before anything else."""
    try:
        scheme = urllib.parse.urlsplit(url).scheme
    except ValueError as e:  # "http://[::1": an IPv6 address without its bracket
        raise ScrapeError(f"cannot use the URL {url}: {e}") from None
    if scheme.lower() not in ("http", "https"):
        raise ScrapeError(f"cannot use the URL {url}: only http:// and https:// URLs are scraped")


def scrape(url, seconds):
    """The libsock_ metric families at url (prometheus_client's Metric objects), or raises
    ScrapeError; abandoned after seconds in all. urllib's timeout bounds each socket operation
    alone: a server that trickles its answer would hold the caller for ever. Takes SIGALRM and
    ITIMER_REAL while it runs, so only from the main thread."""
    global _armed
    check_url(url)
    signal.signal(signal.SIGALRM, _alarm)
    _armed = True
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        # Nested so that a _Timeout raised as the finally clause begins is caught too (the
        # handler disarmed itself, and the timer fires once).
        try:
            families = _scrape(url, seconds)
        finally:
            _armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        raise ScrapeError(f"{url} took over {seconds:g} s") from None
    families = [f for f in families if f.name.startswith("libsock_")]
    if not families:
        raise ScrapeError(f"the body of {url} has no libsock_ metrics (is it the right URL?)")
    return families


def _scrape(url, seconds):
    try:
        with urllib.request.urlopen(url, timeout=seconds) as response:
            # A redirect may lead to ftp:, which urllib follows.
            if not isinstance(response, http.client.HTTPResponse):
                raise ScrapeError(f"{url} led to {response.geturl()}, not an http:// or "
                                  "https:// URL")
            body = _read_body(url, response).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        raise ScrapeError(f"{url} answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ScrapeError(f"cannot reach {url}: {getattr(e, 'reason', e)}") from None
    except (ValueError, http.client.InvalidURL) as e:
        # The URL's, found before any connection: no scheme urllib knows, a character that is
        # not ASCII, a port that is not a number.
        raise ScrapeError(f"cannot use the URL {url}: {e}") from None
    except http.client.HTTPException as e:
        # A reply that is not HTTP (BadStatusLine), a body cut short or badly chunked
        # (IncompleteRead), a line over http.client's limit (LineTooLong). repr: str() of
        # BadStatusLine is the bare line.
        raise ScrapeError(f"{url} sent a bad HTTP answer: {e!r}") from None
    # Counted once the body is in, not while reading: MAX_BODY bounds what is read, and counting
    # 64 MiB takes milliseconds. (A last line without its newline is one more: no matter.)
    lines = body.count("\n")
    if lines > MAX_LINES:
        raise ScrapeError(f"{url} sent {lines:,} lines, over the cap of {MAX_LINES:,} "
                          f"(MAX_LINES in tools/pool_scrape.py: {MAX_SHARDS:,} shards' worth)")
    try:
        # Parsed whole here (the parser is a generator), so that what it raises is told from
        # the callers' own errors. prometheus_client 0.16 raises ValueError for most bad lines
        # and IndexError for "# HELP" without a name or "# TYPE" without a name or type; nothing
        # else in 200,000 mutations of an exposition.
        return list(text_string_to_metric_families(body))
    except (ValueError, IndexError) as e:
        raise ScrapeError(f"the body of {url} does not parse as Prometheus text: {e}") from None


def _read_body(url, response):
    """response's body, or ScrapeError if it is over MAX_BODY."""
    too_big = ScrapeError(f"{url} sent a body over {MAX_BODY >> 20} MiB, the cap (MAX_BODY in "
                          "tools/pool_scrape.py)")
    # Refused before a read: http.client allocates the whole announced length at once (1 TiB
    # announced was a MemoryError).
    if response.length is not None and response.length > MAX_BODY:
        raise too_big
    if response.length is not None:
        # Whole, not read(amt): read(amt) returns a body cut short without IncompleteRead.
        return response.read()
    body = response.read(MAX_BODY + 1)  # no length (chunked or up to the close): one byte over
    if len(body) > MAX_BODY:
        raise too_big
    return body
