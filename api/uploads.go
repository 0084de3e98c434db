package api

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/smsbatch/smsbatch/domain"
)

// A batch upload holds a connection, a spool file and its key's upload slot for
// as long as the client takes to send it: up to 64 MiB, which may take minutes
// on a slow link. So uploads have limits of their own: a minimum transfer rate
// instead of the server's read timeout, and a cap on uploads running per key.

// UploadLimits bound batch uploads. A zero field takes its default; a negative
// one turns its limit off.
type UploadLimits struct {
	// MinRate is the slowest an upload's body may arrive, in bytes per second
	// averaged over RateWindow; a slower one is cut off with 408. Default 4096.
	MinRate int64
	// RateWindow is the span MinRate is measured over; default 20s.
	RateWindow time.Duration
	// PerKey bounds the uploads one API key runs at once; the next gets 429
	// with Retry-After. Default 64: clients create batches in parallel (the
	// benchmarks' 32 at once among them), and each body is bounded.
	PerKey int
}

func (l *UploadLimits) setDefaults() {
	if l.MinRate == 0 {
		l.MinRate = 4096
	}
	if l.RateWindow <= 0 {
		l.RateWindow = 20 * time.Second
	}
	if l.PerKey == 0 {
		l.PerKey = 64
	}
}

// beginUpload takes one of p's upload slots and sets the limits of an upload
// on its connection: the server's timeouts are made for small requests, and a
// million recipients may take minutes to arrive and to store. While the body
// arrives it is held to the minimum rate instead of the read timeout; the write
// timeout is lifted, and the answer gets it whole from its first byte, through
// the ResponseWriter returned. Call release once answered. On error, w is the
// one given.
func (s *server) beginUpload(w http.ResponseWriter, r *http.Request, p Principal) (http.ResponseWriter, io.Reader, func(), error) {
	release, ok := s.uploads.acquire(p.KeyID)
	if !ok {
		w.Header().Set("Retry-After", uploadRetryAfter)
		return w, nil, nil, domain.Errorf(domain.ERATELIMITED, "this API key already has %d uploads in progress, the most it may run at once; retry after the time in Retry-After", s.cfg.Uploads.PerKey)
	}
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	body := http.MaxBytesReader(w, s.minRate(rc, r.Body), s.cfg.Limits.MaxBodyBytes)
	return &answerDeadline{ResponseWriter: w, rc: rc, timeout: s.cfg.Timeouts.Write}, body, release, nil
}

// answerDeadline sets the write deadline when the answer starts.
type answerDeadline struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	started bool
}

func (a *answerDeadline) start() {
	if !a.started {
		a.started = true
		_ = a.rc.SetWriteDeadline(time.Now().Add(a.timeout))
	}
}

func (a *answerDeadline) WriteHeader(code int) {
	a.start()
	a.ResponseWriter.WriteHeader(code)
}

func (a *answerDeadline) Write(b []byte) (int, error) {
	a.start()
	return a.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (a *answerDeadline) Unwrap() http.ResponseWriter { return a.ResponseWriter }

// uploadRetryAfter is what a client over its upload cap is told to wait, in
// seconds: about the time a small upload takes.
const uploadRetryAfter = "5"

// uploadSlots counts the uploads running per API key.
type uploadSlots struct {
	max     int
	mu      sync.Mutex
	running map[string]int
}

func newUploadSlots(max int) *uploadSlots {
	return &uploadSlots{max: max, running: make(map[string]int)}
}

// acquire takes one of key's slots, reporting false when all are taken; call
// release when the upload is answered.
func (u *uploadSlots) acquire(key string) (release func(), ok bool) {
	if u.max < 0 {
		return func() {}, true
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.running[key] >= u.max {
		return nil, false
	}
	u.running[key]++
	return func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.running[key]--; u.running[key] == 0 {
			delete(u.running, key)
		}
	}, true
}

// minRateBody cuts off a request body that arrives slower than perWindow bytes
// in each window. It sets the connection's read deadline rather than watching
// with a timer, so a client that sends nothing at all is cut off as surely as a
// slow one, without a goroutine per upload.
type minRateBody struct {
	body      io.ReadCloser
	rc        *http.ResponseController
	window    time.Duration
	perWindow int64
	// got counts the bytes of the current window, which ends at deadline.
	got      int64
	deadline time.Time
	off      bool
}

// minRate holds body to the uploads' minimum rate, which replaces the server's
// read timeout.
func (s *server) minRate(rc *http.ResponseController, body io.ReadCloser) io.ReadCloser {
	l := s.cfg.Uploads
	if l.MinRate < 0 {
		_ = rc.SetReadDeadline(time.Time{})
		return body
	}
	return &minRateBody{body: body, rc: rc, window: l.RateWindow,
		perWindow: max(1, int64(float64(l.MinRate)*l.RateWindow.Seconds()))}
}

func (b *minRateBody) Close() error { return b.body.Close() }

func (b *minRateBody) Read(p []byte) (int, error) {
	if !b.off && (b.deadline.IsZero() || b.got >= b.perWindow) {
		b.got = 0
		b.deadline = time.Now().Add(b.window)
		// Not every ResponseWriter reaches a connection (httptest's recorder
		// does not); there is no deadline to keep there.
		b.off = b.rc.SetReadDeadline(b.deadline) != nil
	}
	n, err := b.body.Read(p)
	b.got += int64(n)
	var netErr net.Error
	switch {
	case err == nil:
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout():
		perSecond := float64(b.perWindow) / b.window.Seconds()
		return n, domain.Errorf(domain.ETOOSLOW, "the upload was cut off: it arrived slower than %.0f bytes per second over %s", perSecond, b.window)
	case errors.Is(err, io.EOF) && !b.off:
		// The body is all here. Storing it may take longer than a window, and
		// the server reads the connection meanwhile to notice a client that
		// leaves: a deadline left behind would cancel the request.
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// spoolPattern names upload spool files, for os.CreateTemp and CleanSpoolDir.
// It has no extension: earlier versions named theirs *.jsonl, and those are
// cleaned up too.
const spoolPattern = "smsbatch-upload-*"

// spoolInMemory is how much of an upload's spool stays in memory: a create of
// up to a few thousand recipients never touches the disk. Creating and
// removing a file cost more CPU than all the rest of a small create (about
// 0.3 ms of system time each on this project's 2-core machine, more while the
// store syncs), and hundreds of creates a second spent it on nothing. Beyond
// it the spool moves to a file, so a million recipients never sit in memory;
// at most this much a concurrent upload is held, beside the 256 KiB buffers
// each already takes.
const spoolInMemory = 256 << 10

// spool holds an upload's recipients between validation and storage (see
// spool.go for its records): in memory up to spoolInMemory bytes, then in a
// file in dir, created by the write that would pass it. The file's name is
// removed at once: the open file keeps its data until closed, and a process
// killed mid-upload leaves nothing behind. Where a system refuses to remove an
// open file, the name goes at close, and CleanSpoolDir removes what a crash
// left.
type spool struct {
	dir     string
	mem     []byte
	file    *os.File
	removed bool
}

func newSpool(dir string) *spool { return &spool{dir: dir} }

func (s *spool) Write(p []byte) (int, error) {
	if s.file == nil {
		if len(s.mem)+len(p) <= spoolInMemory {
			s.mem = append(s.mem, p...)
			return len(p), nil
		}
		f, err := os.CreateTemp(s.dir, spoolPattern)
		if err != nil {
			return 0, fmt.Errorf("create spool file: %w", err)
		}
		s.file, s.removed = f, os.Remove(f.Name()) == nil
		if _, err := f.Write(s.mem); err != nil {
			return 0, err
		}
		s.mem = nil
	}
	return s.file.Write(p)
}

// contents reads the spool from its start.
func (s *spool) contents() (io.Reader, error) {
	if s.file == nil {
		return bytes.NewReader(s.mem), nil
	}
	if _, err := s.file.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("rewind spool: %w", err)
	}
	return s.file, nil
}

// close lets go of the spool's memory or file.
func (s *spool) close() {
	s.mem = nil
	if s.file != nil {
		s.file.Close()
		if !s.removed {
			os.Remove(s.file.Name())
		}
	}
}

// CleanSpoolDir makes dir, the service's own directory of upload spool files,
// and removes the spool files earlier runs left in it. It returns how many.
func CleanSpoolDir(dir string) (int, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, fmt.Errorf("clean spool directory: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("clean spool directory: %w", err)
	}
	removed := 0
	var errs []error
	for _, e := range entries {
		if ok, _ := filepath.Match(spoolPattern, e.Name()); !ok || e.IsDir() {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed++
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("clean spool directory: %w", err)
	}
	return removed, nil
}
