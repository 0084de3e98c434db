package api

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Tickets configures the WebSocket tickets a browser trades its key for.
type Tickets struct {
	// Secret signs tickets. Instances behind one load balancer must share it, so
	// a ticket issued by one is accepted by another. Optional: default random,
	// which is right for a single instance. At least 32 bytes when set.
	Secret []byte
	// TTL is how long a ticket is valid; default 30s.
	TTL time.Duration
	// Redeem records a ticket's nonce as used, once across every instance
	// sharing the event store, and reports whether this was the first use
	// (commands.Handlers.RedeemOnce). Optional: without it tickets are
	// single-use within this process only.
	Redeem func(ctx context.Context, nonce string, at time.Time) (bool, error)

	// now is the clock of ticket expiry; tests move it.
	now func() time.Time
}

func (t *Tickets) setDefaults() error {
	if t.TTL <= 0 {
		t.TTL = 30 * time.Second
	}
	if t.now == nil {
		t.now = time.Now
	}
	if len(t.Secret) == 0 {
		t.Secret = make([]byte, 32)
		if _, err := rand.Read(t.Secret); err != nil {
			return fmt.Errorf("ticket secret: %w", err)
		}
	}
	return nil
}

func (t Tickets) validate() error {
	if len(t.Secret) > 0 && len(t.Secret) < 32 {
		return errors.New("Tickets.Secret must be at least 32 bytes")
	}
	return nil
}

// ticketBook issues and redeems tickets.
type ticketBook struct {
	cfg Tickets
	// used remembers redeemed tickets until they expire when there is no Redeem.
	mu   sync.Mutex
	used map[string]time.Time
}

// ticket is what a WebSocket ticket vouches for.
type ticket struct {
	Tenant  string `json:"t"`
	KeyID   string `json:"k"`
	Expires int64  `json:"e"` // Unix milliseconds
	Nonce   string `json:"n"`
}

// issueTicket returns a signed ticket for p, valid Tickets.TTL. It is signed rather
// than stored so that any instance sharing Tickets.Secret accepts it.
func (b *ticketBook) issue(p Principal) (string, time.Time, error) {
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return "", time.Time{}, fmt.Errorf("ticket nonce: %w", err)
	}
	expires := b.cfg.now().Add(b.cfg.TTL).UTC().Truncate(time.Millisecond)
	body, err := json.Marshal(ticket{Tenant: p.Tenant, KeyID: p.KeyID, Expires: expires.UnixMilli(), Nonce: base64.RawURLEncoding.EncodeToString(nonce)})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("encode ticket: %w", err)
	}
	payload := base64.RawURLEncoding.EncodeToString(body)
	return payload + "." + base64.RawURLEncoding.EncodeToString(b.sign(payload)), expires, nil
}

func (b *ticketBook) sign(payload string) []byte {
	m := hmac.New(sha256.New, b.cfg.Secret)
	m.Write([]byte(payload))
	return m.Sum(nil)
}

// redeemTicket returns the principal a ticket vouches for, once across every
// instance sharing the event store (with Redeem). An error means the ticket
// could not be checked.
func (b *ticketBook) redeem(ctx context.Context, s string) (Principal, bool, error) {
	payload, sig, ok := strings.Cut(s, ".")
	mac, err := base64.RawURLEncoding.DecodeString(sig)
	if !ok || err != nil || !hmac.Equal(mac, b.sign(payload)) {
		return Principal{}, false, nil
	}
	body, err := base64.RawURLEncoding.DecodeString(payload)
	var t ticket
	if err != nil || json.Unmarshal(body, &t) != nil || t.Tenant == "" {
		return Principal{}, false, nil
	}
	now := b.cfg.now()
	expires := time.UnixMilli(t.Expires)
	if !now.Before(expires) {
		return Principal{}, false, nil
	}
	if b.cfg.Redeem != nil {
		first, err := b.cfg.Redeem(ctx, t.Nonce, now)
		if err != nil || !first {
			return Principal{}, false, err
		}
		return Principal{Tenant: t.Tenant, KeyID: t.KeyID}, true, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for n, exp := range b.used {
		if !now.Before(exp) {
			delete(b.used, n)
		}
	}
	if _, used := b.used[t.Nonce]; used {
		return Principal{}, false, nil
	}
	b.used[t.Nonce] = expires
	return Principal{Tenant: t.Tenant, KeyID: t.KeyID}, true, nil
}
