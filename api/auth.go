package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/go-chi/httprate"

	"github.com/smsbatch/smsbatch/domain"
)

// Principal is the caller an API key identifies.
type Principal struct {
	Tenant string
	// KeyID names the key without revealing it: the tenant and a short hash.
	KeyID string
}

// Keyring maps API keys to tenants. Keys are held only as SHA-256 digests, so the
// keys themselves never sit in memory longer than parsing takes, and a lookup
// compares digests, which reveals nothing about a key through timing.
type Keyring struct {
	keys map[[32]byte]Principal
}

// ParseKeys reads "tenant:key,tenant:key". Error messages never contain a key.
func ParseKeys(s string) (*Keyring, error) {
	k := &Keyring{keys: make(map[[32]byte]Principal)}
	for i, pair := range strings.Split(s, ",") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		tenant, key, ok := strings.Cut(pair, ":")
		tenant, key = strings.TrimSpace(tenant), strings.TrimSpace(key)
		if !ok || tenant == "" || key == "" {
			return nil, fmt.Errorf("API key entry %d: want tenant:key", i+1)
		}
		if len(key) < 16 {
			return nil, fmt.Errorf("API key entry %d (tenant %s): key shorter than 16 characters", i+1, tenant)
		}
		if err := k.Add(tenant, key); err != nil {
			return nil, fmt.Errorf("API key entry %d (tenant %s): %w", i+1, tenant, err)
		}
	}
	return k, nil
}

// Add lets key act for tenant.
func (k *Keyring) Add(tenant, key string) error {
	if k.keys == nil {
		k.keys = make(map[[32]byte]Principal)
	}
	sum := sha256.Sum256([]byte(key))
	if p, dup := k.keys[sum]; dup && p.Tenant != tenant {
		return errors.New("the same key is given to two tenants")
	}
	k.keys[sum] = Principal{Tenant: tenant, KeyID: tenant + "/" + hex.EncodeToString(sum[:4])}
	return nil
}

// Len is the number of keys.
func (k *Keyring) Len() int { return len(k.keys) }

// Tenants lists the tenants the keys act for, each once, sorted.
func (k *Keyring) Tenants() []string {
	var out []string
	for _, p := range k.keys {
		if !slices.Contains(out, p.Tenant) {
			out = append(out, p.Tenant)
		}
	}
	slices.Sort(out)
	return out
}

// Lookup returns the principal of key.
func (k *Keyring) Lookup(key string) (Principal, bool) {
	p, ok := k.keys[sha256.Sum256([]byte(key))]
	return p, ok
}

type principalKey struct{}

// PrincipalFrom returns the authenticated caller of a request.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// authenticate admits requests with a known bearer key. An address that has
// failed too often is refused before its key is even looked at: answering a
// right key there would let it go on guessing at full speed.
func (s *server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		addr := clientAddr(r)
		if s.authFailures.blocked(addr) {
			w.Header().Set("Retry-After", s.authFailures.retryAfter)
			writeError(w, r, s.log, domain.Errorf(domain.ERATELIMITED, "too many failed authentications from this address; retry after the time in Retry-After"))
			return
		}
		key, ok := bearer(r.Header.Get("Authorization"))
		if !ok || key == "" {
			s.authFailures.failed(w, r, addr)
			writeError(w, r, s.log, domain.Errorf(domain.EUNAUTHORIZED, "missing API key: send Authorization: Bearer <key>"))
			return
		}
		p, ok := s.cfg.Keys.Lookup(strings.TrimSpace(key))
		if !ok {
			s.authFailures.failed(w, r, addr)
			writeError(w, r, s.log, domain.Errorf(domain.EUNAUTHORIZED, "unknown API key"))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	})
}

// authFailures counts failed authentications per client address, with
// httprate's sliding window.
type authFailures struct {
	limiter    *httprate.RateLimiter
	limit      int
	retryAfter string
}

// newAuthFailures returns the limit of l; nil when l turns it off.
func newAuthFailures(l RateLimit) *authFailures {
	if l.Requests < 0 {
		return nil
	}
	return &authFailures{
		// No X-RateLimit-* headers: they would read as the per-key limit's.
		limiter: httprate.NewRateLimiter(l.Requests, l.Window, httprate.WithResponseHeaders(httprate.ResponseHeaders{})),
		limit:   l.Requests, retryAfter: strconv.Itoa(int(math.Ceil(l.Window.Seconds()))),
	}
}

// blocked reports whether addr has used up its failures for now.
func (a *authFailures) blocked(addr string) bool {
	if a == nil {
		return false
	}
	_, rate, err := a.limiter.Status(addr)
	return err == nil && int(math.Round(rate)) >= a.limit
}

// failed counts one failure of addr.
func (a *authFailures) failed(w http.ResponseWriter, r *http.Request, addr string) {
	if a != nil {
		a.limiter.OnLimit(w, r, addr)
	}
}

// clientAddr is the address of the connection's far end: a header naming
// another could be written by anyone. IPv6 addresses count per /64, which one
// client usually holds whole.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return httprate.CanonicalizeIP(host)
}

// bearer returns the credentials of an Authorization header of the Bearer
// scheme, whose name is case-insensitive (RFC 9110 11.1): "bearer <key>" is
// the same header.
func bearer(header string) (string, bool) {
	scheme, key, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return key, true
}
