package projections

import (
	"encoding/base64"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/smsbatch/smsbatch/domain"
)

// The recipients read model answers "what did each recipient get": a batch's
// numbers, kept a page at a time as the recipients stream holds them, and one
// outcome record for each recipient that was dispatched or skipped. A
// recipient without a record was never dispatched: it is unsent. Numbers are
// written once per page of 1,000 (a million recipients cost a thousand writes
// at create time); outcome records are written once a recipient's outcome is
// final (and again with its delivery receipt), the records of recipients not
// final yet kept in the batch's state (see BatchState.FoldOutcomes).
// Variables are not copied: they stay in the recipients stream, where the
// export reads them.

// Recipient statuses, as GET /api/batch/{id}/recipients shows them.
const (
	RecipientUnsent  = "unsent"  // never dispatched (not yet, or the batch was cancelled)
	RecipientPending = "pending" // dispatched, no final outcome yet (in flight or waiting for a retry)
	RecipientSent    = "sent"
	RecipientFailed  = "failed"
	RecipientSkipped = "skipped"
)

// RecipientStatuses lists every recipient status.
var RecipientStatuses = []string{RecipientUnsent, RecipientPending, RecipientSent, RecipientFailed, RecipientSkipped}

// Delivery receipts' outcomes.
const (
	DeliveryDelivered   = "delivered"
	DeliveryUndelivered = "undelivered"
)

// RecipientOutcome is what the events say of one recipient once it was
// dispatched or skipped. Stores keep it as it is (short JSON names, as there
// may be millions).
type RecipientOutcome struct {
	Index  int    `json:"i"`
	Status string `json:"s"`
	// Category and Code are those of the failure or skip, or of the last
	// failed attempt while the message waits for its retry.
	Category     string    `json:"c,omitempty"`
	Code         string    `json:"e,omitempty"`
	Attempts     int       `json:"a,omitempty"`
	ProviderID   string    `json:"p,omitempty"`
	DispatchedAt time.Time `json:"d,omitzero"`
	OutcomeAt    time.Time `json:"o,omitzero"`
	Delivery     string    `json:"r,omitempty"`
	DeliveredAt  time.Time `json:"dr,omitzero"`
}

// OutcomeIndexes returns the recipients whose outcome record payload changes.
func OutcomeIndexes(payload domain.Event) []int {
	switch p := payload.(type) {
	case domain.MessagesDispatched:
		out := make([]int, len(p.Messages))
		for i, d := range p.Messages {
			out[i] = d.Index
		}
		return out
	case domain.MessageSent:
		return []int{p.Index}
	case domain.MessageAttemptFailed:
		return []int{p.Index}
	case domain.MessageFailed:
		return []int{p.Index}
	case domain.MessageSkipped:
		return []int{p.Index}
	case domain.MessageDelivered:
		return []int{p.Index}
	case domain.MessageUndelivered:
		return []int{p.Index}
	}
	return nil
}

// NewOutcome is the record of a recipient no event has touched yet.
func NewOutcome(index int) RecipientOutcome {
	return RecipientOutcome{Index: index, Status: RecipientUnsent}
}

// Apply folds payload, one of the events OutcomeIndexes names index in, into
// the recipient's record. Times come from the events, so a rebuild is identical.
func (o *RecipientOutcome) Apply(index int, payload domain.Event) {
	at := payload.Header().At.UTC()
	switch p := payload.(type) {
	case domain.MessagesDispatched:
		for _, d := range p.Messages {
			if d.Index != index {
				continue
			}
			if !final(o.Status) {
				o.Status = RecipientPending
			}
			o.Attempts = max(o.Attempts, d.Attempt)
			o.DispatchedAt = at
		}
	case domain.MessageSent:
		o.Status, o.Category, o.Code = RecipientSent, "", ""
		o.Attempts = max(o.Attempts, p.Attempt)
		o.ProviderID = p.ProviderID
		o.OutcomeAt = at
	case domain.MessageAttemptFailed:
		o.Category, o.Code = string(p.Category), p.Code
		o.Attempts = max(o.Attempts, p.Attempt)
	case domain.MessageFailed:
		o.Status, o.Category, o.Code = RecipientFailed, string(p.Category), p.Code
		o.Attempts = max(o.Attempts, p.Attempt)
		o.OutcomeAt = at
	case domain.MessageSkipped:
		o.Status, o.Category, o.Code = RecipientSkipped, string(p.Category), string(p.Category)
		o.Attempts = max(o.Attempts, p.Attempt)
		o.OutcomeAt = at
	case domain.MessageDelivered:
		o.Delivery, o.DeliveredAt = DeliveryDelivered, at
		if o.ProviderID == "" {
			o.ProviderID = p.ProviderID
		}
	case domain.MessageUndelivered:
		o.Delivery, o.DeliveredAt = DeliveryUndelivered, at
		if o.ProviderID == "" {
			o.ProviderID = p.ProviderID
		}
		if o.Code == "" {
			// Why it was not delivered (30003: unreachable handset), as a
			// provider's console shows beside the recipient.
			o.Code = p.Code
		}
	}
}

func final(status string) bool {
	return status == RecipientSent || status == RecipientFailed || status == RecipientSkipped
}

// RecipientNumbers returns the numbers of a recipients page in the order the
// page holds them.
func RecipientNumbers(p domain.RecipientsPageAdded) []string {
	out := make([]string, len(p.Recipients))
	for i, r := range p.Recipients {
		out[i] = r.Phone
	}
	return out
}

// JoinNumbers and SplitNumbers store a page's numbers as one value: E.164
// numbers hold no newline.
func JoinNumbers(numbers []string) string { return strings.Join(numbers, "\n") }

// SplitNumbers is the inverse of JoinNumbers.
func SplitNumbers(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// Recipient is one recipient as GET /api/batch/{id}/recipients shows it.
type Recipient struct {
	Index       int    `json:"index"`
	PhoneNumber string `json:"phoneNumber"`
	Status      string `json:"status"`
	// Category and Code say why a recipient failed or was skipped, or why the
	// last attempt of a pending one failed.
	Category          string     `json:"category,omitempty"`
	Code              string     `json:"code,omitempty"`
	Attempts          int        `json:"attempts"`
	ProviderMessageID string     `json:"providerMessageId,omitempty"`
	DispatchedAt      *time.Time `json:"dispatchedAt,omitempty"`
	OutcomeAt         *time.Time `json:"outcomeAt,omitempty"`
	// Delivery is the provider's receipt: delivered or undelivered.
	Delivery    string     `json:"delivery,omitempty"`
	DeliveredAt *time.Time `json:"deliveredAt,omitempty"`
}

// RecipientOf joins a recipient's number and outcome record (nil: unsent).
func RecipientOf(index int, phone string, o *RecipientOutcome) Recipient {
	r := Recipient{Index: index, PhoneNumber: phone, Status: RecipientUnsent}
	if o == nil {
		return r
	}
	r.Status, r.Category, r.Code, r.Attempts, r.ProviderMessageID = o.Status, o.Category, o.Code, o.Attempts, o.ProviderID
	r.DispatchedAt, r.OutcomeAt = timePtr(o.DispatchedAt), timePtr(o.OutcomeAt)
	r.Delivery, r.DeliveredAt = o.Delivery, timePtr(o.DeliveredAt)
	return r
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// RecipientQuery pages through a batch's recipients in index order.
type RecipientQuery struct {
	Tenant, BatchID string
	// Status filters to one of RecipientStatuses; empty for all.
	Status string
	// Category filters to recipients whose record has that error category.
	Category string
	// Phone filters to numbers starting with it: "+" and up to 15 digits. A
	// whole number matches one recipient at most (a number appears once per batch).
	Phone string
	// Limit is the page size (1..MaxRecipientLimit; 0 means DefaultRecipientLimit).
	Limit int
	// Cursor is the NextCursor of the previous page; empty for the first.
	Cursor string
}

// Page size limits of the recipients query. One page of the most is one page of
// the recipients stream.
const (
	DefaultRecipientLimit = 100
	MaxRecipientLimit     = domain.RecipientPageSize
)

const recipientCursorPrefix = "r1:"

// RecipientCursor returns the cursor of the page that follows r.
func RecipientCursor(r Recipient) string {
	return base64.RawURLEncoding.EncodeToString([]byte(recipientCursorPrefix + strconv.Itoa(r.Index)))
}

// RecipientPage is a validated RecipientQuery.
type RecipientPage struct {
	Limit            int
	Status, Category string
	Phone            string
	// AfterIndex is the last recipient of the previous page; -1 for the first.
	AfterIndex int
}

// Page validates q: a limit out of range, an unknown status or category, a
// phone filter that is not "+" and digits, or a cursor this package did not
// make is EINVALID.
func (q RecipientQuery) Page() (RecipientPage, error) {
	limit, err := pageLimit(q.Limit, DefaultRecipientLimit, MaxRecipientLimit)
	if err != nil {
		return RecipientPage{}, err
	}
	page := RecipientPage{Limit: limit, AfterIndex: -1, Status: q.Status, Phone: q.Phone}
	if q.Status != "" && !slices.Contains(RecipientStatuses, q.Status) {
		return RecipientPage{}, domain.Errorf(domain.EINVALID, "unknown recipient status %q; want one of %s", q.Status, strings.Join(RecipientStatuses, ", "))
	}
	if q.Category != "" {
		c, err := domain.ParseErrorCategory(q.Category)
		if err != nil {
			return RecipientPage{}, domain.Errorf(domain.EINVALID, "unknown error category %q", q.Category)
		}
		page.Category = string(c)
	}
	if q.Phone != "" && !PhonePrefix(q.Phone) {
		return RecipientPage{}, domain.Errorf(domain.EINVALID, "phone must be a number in E.164 form or its beginning: + and up to 15 digits")
	}
	if q.Cursor == "" {
		return page, nil
	}
	raw, ok := decodeCursor(q.Cursor, recipientCursorPrefix)
	if !ok {
		return RecipientPage{}, badCursor()
	}
	index, err := strconv.Atoi(raw)
	if err != nil || index < 0 || index > maxCursorIndex {
		return RecipientPage{}, badCursor()
	}
	page.AfterIndex = index
	return page, nil
}

// maxCursorIndex bounds the index a cursor may carry: no batch holds more
// recipients, and a larger one (a crafted cursor) overflowed the scans from
// the index after it, and PostgreSQL's integer columns.
const maxCursorIndex = math.MaxInt32 - 1

// PhonePrefix reports whether s is "+" followed by 1 to 15 digits: an E.164
// number or its beginning.
func PhonePrefix(s string) bool {
	digits, ok := strings.CutPrefix(s, "+")
	if !ok || digits == "" || len(digits) > 15 {
		return false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// RecipientSource is what a store gives QueryRecipients to read from, within
// one consistent view of its data.
type RecipientSource interface {
	// Numbers returns the numbers of recipients page p (RecipientPageSize a
	// page); nil when the page is not stored.
	Numbers(page int) ([]string, error)
	// Outcomes returns, in index order, the records of the recipients from
	// index from to to-1 that have one, of status and category when they are
	// not empty, at most limit of them (all when limit <= 0).
	Outcomes(from, to int, status, category string, limit int) ([]RecipientOutcome, error)
}

// QueryRecipients answers a recipients page of a batch whose state is st from
// src. Each filter takes the path that reads least: a page without filters is
// a range of indexes; unsent recipients are those from the state's cursor on
// (dispatch goes in index order, so every recipient before it has a record),
// and, while some wait for their quiet hours, from the first of those on;
// pending ones are the state's outstanding set; a phone filter walks the
// numbers a page at a time; the other statuses ask the store for their records.
func QueryRecipients(st *BatchState, page RecipientPage, src RecipientSource) ([]Recipient, string, error) {
	if page.AfterIndex >= st.Total-1 && page.AfterIndex >= 0 {
		return nil, "", nil // nothing after the last recipient
	}
	q := recipientScan{st: st, page: page, src: withPending{src: src, st: st}, want: page.Limit + 1, from: page.AfterIndex + 1}
	var err error
	switch {
	case page.Phone != "":
		err = q.byPhone()
	case page.Status == RecipientUnsent:
		if page.Category == "" {
			from := st.Cursor
			if st.Waiting > 0 {
				from = min(from, st.WaitingFrom) // passed over for their quiet hours
			}
			err = q.indexes(max(q.from, from), st.Total)
		}
	case page.Status == RecipientPending:
		err = q.pending()
	case page.Status == "" && page.Category == "":
		err = q.indexes(q.from, min(st.Total, q.from+q.want))
	default:
		err = q.records()
	}
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(q.out) > page.Limit {
		q.out = q.out[:page.Limit]
		next = RecipientCursor(q.out[len(q.out)-1])
	}
	return q.out, next, nil
}

type recipientScan struct {
	st   *BatchState
	page RecipientPage
	src  RecipientSource
	want int
	from int
	out  []Recipient

	// numbers is the page of numbers read last, numbersPage its number.
	numbers     []string
	numbersPage int
	haveNumbers bool
}

func (q *recipientScan) number(index int) (string, error) {
	p := index / domain.RecipientPageSize
	if !q.haveNumbers || q.numbersPage != p {
		nums, err := q.src.Numbers(p)
		if err != nil {
			return "", fmt.Errorf("numbers of page %d: %w", p, err)
		}
		q.numbers, q.numbersPage, q.haveNumbers = nums, p, true
	}
	if i := index - p*domain.RecipientPageSize; i < len(q.numbers) {
		return q.numbers[i], nil
	}
	return "", nil
}

func (q *recipientScan) matches(r Recipient) bool {
	return (q.page.Status == "" || r.Status == q.page.Status) && (q.page.Category == "" || r.Category == q.page.Category)
}

// indexes adds the recipients of indexes from..to-1 that match, up to want.
func (q *recipientScan) indexes(from, to int) error {
	for lo := from; lo < to && len(q.out) < q.want; lo += domain.RecipientPageSize {
		hi := min(to, lo+domain.RecipientPageSize)
		recs, err := q.src.Outcomes(lo, hi, "", "", 0)
		if err != nil {
			return err
		}
		if err := q.join(lo, hi, recs); err != nil {
			return err
		}
	}
	return nil
}

// join adds the recipients from..to-1 given the records among them, in order.
func (q *recipientScan) join(from, to int, recs []RecipientOutcome) error {
	next := 0
	for i := from; i < to && len(q.out) < q.want; i++ {
		var rec *RecipientOutcome
		for next < len(recs) && recs[next].Index < i {
			next++
		}
		if next < len(recs) && recs[next].Index == i {
			rec = &recs[next]
		}
		phone, err := q.number(i)
		if err != nil {
			return err
		}
		if r := RecipientOf(i, phone, rec); q.matches(r) {
			q.out = append(q.out, r)
		}
	}
	return nil
}

// one adds recipient i if it matches.
func (q *recipientScan) one(i int) error {
	recs, err := q.src.Outcomes(i, i+1, "", "", 0)
	if err != nil {
		return err
	}
	return q.join(i, i+1, recs)
}

func (q *recipientScan) pending() error {
	for _, i := range q.st.Outstanding {
		if i < q.from || len(q.out) >= q.want {
			continue
		}
		if err := q.one(i); err != nil {
			return err
		}
	}
	return nil
}

func (q *recipientScan) records() error {
	recs, err := q.src.Outcomes(q.from, q.st.Total, q.page.Status, q.page.Category, q.want)
	if err != nil {
		return err
	}
	for i := range recs {
		phone, err := q.number(recs[i].Index)
		if err != nil {
			return err
		}
		if r := RecipientOf(recs[i].Index, phone, &recs[i]); q.matches(r) {
			q.out = append(q.out, r)
		}
	}
	return nil
}

// byPhone walks the numbers a page at a time from the cursor, and reads the
// records of the numbers that match.
func (q *recipientScan) byPhone() error {
	for p := q.from / domain.RecipientPageSize; p*domain.RecipientPageSize < q.st.Total && len(q.out) < q.want; p++ {
		nums, err := q.src.Numbers(p)
		if err != nil {
			return fmt.Errorf("numbers of page %d: %w", p, err)
		}
		q.numbers, q.numbersPage, q.haveNumbers = nums, p, true
		for j, n := range nums {
			i := p*domain.RecipientPageSize + j
			if i < q.from || i >= q.st.Total || !strings.HasPrefix(n, q.page.Phone) {
				continue
			}
			if err := q.one(i); err != nil {
				return err
			}
			if len(q.out) >= q.want {
				return nil
			}
		}
	}
	return nil
}
