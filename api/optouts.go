package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"

	"github.com/go-chi/chi/v5"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/optouts"
)

// OptOuts serves the tenants' opt-out lists: GET and POST /api/optouts, GET and
// DELETE /api/optouts/{phoneNumber}. A caller sees and changes its own
// tenant's list only.
type OptOuts struct {
	// List reads the lists (required).
	List *optouts.List
	// Commands change them (required).
	Commands *commands.OptOuts
}

// maxOptOutBody bounds POST /api/optouts's body: one phone number.
const maxOptOutBody = 4 << 10

type optOutList struct {
	OptOuts    []optouts.Entry `json:"optOuts"`
	NextCursor string          `json:"nextCursor,omitempty"`
	// Total is how many numbers the list holds.
	Total int `json:"total"`
}

func (s *server) listOptOuts(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	limit, err := queryInt(r, "limit", 0, 1000)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if limit == 0 {
		limit = 100
	}
	page, err := s.cfg.OptOuts.List.Page(r.Context(), p.Tenant, r.URL.Query().Get("cursor"), limit)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, optOutList{OptOuts: page.Entries, NextCursor: page.NextCursor, Total: page.Total})
}

// optOutPhone reads the {phoneNumber} of the path as a number of the default
// region; one that is not a number is on no list.
func (s *server) optOutPhone(r *http.Request) (string, error) {
	raw, err := url.PathUnescape(chi.URLParam(r, "phoneNumber"))
	if err != nil {
		return "", domain.Errorf(domain.ENOTFOUND, "not on the opt-out list")
	}
	phone, err := domain.NormalizePhone(raw, s.cfg.DefaultRegion)
	if err != nil {
		return "", domain.Errorf(domain.ENOTFOUND, "not on the opt-out list: not a phone number")
	}
	return phone, nil
}

func (s *server) getOptOut(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	phone, err := s.optOutPhone(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	e, listed, err := s.cfg.OptOuts.List.Get(r.Context(), p.Tenant, phone)
	if err == nil && !listed {
		err = domain.Errorf(domain.ENOTFOUND, "%s is not on the opt-out list", phone)
	}
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

// addOptOut puts a number on the caller's list: 201 with its entry, or 200
// when it was on it already.
func (s *server) addOptOut(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxOptOutBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeError(w, r, s.log, domain.Errorf(domain.ETOOLARGE, "the body is over %d bytes", maxOptOutBody))
			return
		}
		writeError(w, r, s.log, domain.Errorf(domain.EMALFORMED, "the body could not be read"))
		return
	}
	var req struct {
		PhoneNumber *string `json:"phoneNumber"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || expectEnd(dec) != nil {
		writeError(w, r, s.log, domain.Errorf(domain.EMALFORMED, `the body must be one JSON object: {"phoneNumber": "+14155550100"}`))
		return
	}
	if req.PhoneNumber == nil {
		writeError(w, r, s.log, &domain.Error{Code: domain.EINVALID, Message: "phoneNumber is required",
			Details: []domain.FieldProblem{{Field: "phoneNumber", Problem: "required"}}})
		return
	}
	phone, err := domain.NormalizePhone(*req.PhoneNumber, s.cfg.DefaultRegion)
	if err != nil {
		if !errors.Is(err, domain.ErrInvalidPhone) {
			writeError(w, r, s.log, err)
			return
		}
		writeError(w, r, s.log, &domain.Error{Code: domain.EINVALID, Message: "phoneNumber is not a valid phone number",
			Details: []domain.FieldProblem{{Field: "phoneNumber", Problem: err.Error()}}})
		return
	}
	s.underOptionalKey(w, r, p.Tenant, body, func(w http.ResponseWriter) {
		changed, err := s.cfg.OptOuts.Commands.Change(r.Context(), commands.ChangeOptOut{
			Tenant: p.Tenant, Phone: phone, OptOut: true, Source: domain.OptOutByAPI, By: p.KeyID,
		})
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		e, _, err := s.cfg.OptOuts.List.Get(r.Context(), p.Tenant, phone)
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		status := http.StatusOK
		if changed {
			status = http.StatusCreated
		}
		writeJSON(w, status, e)
	})
}

// removeOptOut takes a number off the caller's list: 204, whether it was on
// it or not. It is idempotent as it is, so an Idempotency-Key changes nothing.
func (s *server) removeOptOut(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	phone, err := s.optOutPhone(r)
	if err != nil {
		// Not a number: on no list, and so off it already.
		w.WriteHeader(http.StatusNoContent)
		return
	}
	_, err = s.cfg.OptOuts.Commands.Change(r.Context(), commands.ChangeOptOut{
		Tenant: p.Tenant, Phone: phone, OptOut: false, Source: domain.OptOutByAPI, By: p.KeyID,
	})
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// underOptionalKey runs a command through the request's Idempotency-Key when
// it has one, so that a retry gets the first answer (201, not 200).
func (s *server) underOptionalKey(w http.ResponseWriter, r *http.Request, tenant string, body []byte, run func(w http.ResponseWriter)) {
	key, err := idempotencyKey(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if key == "" {
		run(w)
		return
	}
	fp := newFingerprint(r)
	_, _ = fp.Write(body)
	s.underKey(w, r, tenant, key, fp.sum(), "", nil, run)
}
