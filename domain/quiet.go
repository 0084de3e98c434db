package domain

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	_ "time/tzdata" // quiet hours need every zone, whatever the machine has installed

	"github.com/nyaruka/phonenumbers"
)

// QuietHours is a daily window, in each recipient's local time, when no
// message goes out: a message due then waits for the window's end, and the
// others of the batch go on. With Timezone set, that zone is every recipient's.
type QuietHours struct {
	// Start and End are "HH:MM" clock times; Start after End spans midnight
	// ("21:00" to "08:00").
	Start string `json:"start"`
	End   string `json:"end"`
	// Timezone is an IANA zone name that overrides the zones of the numbers.
	Timezone string `json:"timezone,omitempty"`
}

// ParseQuietHours checks a quiet-hours option and returns it.
func ParseQuietHours(start, end, timezone string) (QuietHours, error) {
	q := QuietHours{Start: start, End: end, Timezone: timezone}
	s, err1 := clockMinutes(start)
	e, err2 := clockMinutes(end)
	switch {
	case err1 != nil:
		return QuietHours{}, Errorf(EINVALID, "quietHours.start %q: %v", clip(start, 16), err1)
	case err2 != nil:
		return QuietHours{}, Errorf(EINVALID, "quietHours.end %q: %v", clip(end, 16), err2)
	case s == e:
		return QuietHours{}, Errorf(EINVALID, "quietHours.start and end are the same time: there is no window to keep quiet")
	}
	if timezone != "" {
		// "Local" loads, but is whatever zone the server runs in, not the
		// recipients'; "UTC" is the name of UTC.
		if _, err := location(timezone); err != nil || timezone == "Local" {
			return QuietHours{}, Errorf(EINVALID, "timezone %q is not an IANA time zone such as America/New_York", clip(timezone, 64))
		}
	}
	return q, nil
}

// clockMinutes reads "HH:MM" as minutes after midnight.
func clockMinutes(s string) (int, error) {
	t, err := time.Parse("15:04", s)
	if err != nil || len(s) != 5 {
		return 0, fmt.Errorf("want a 24-hour time such as 21:00")
	}
	return t.Hour()*60 + t.Minute(), nil
}

var locations sync.Map // zone name -> *time.Location

func location(name string) (*time.Location, error) {
	if l, ok := locations.Load(name); ok {
		return l.(*time.Location), nil
	}
	l, err := time.LoadLocation(name)
	if err != nil {
		return nil, err
	}
	locations.Store(name, l)
	return l, nil
}

// ZoneGroup is the zones whose quiet hours apply to phone, an E.164 number: the
// batch's timezone when it has one, otherwise every zone the number may be in,
// sorted and joined by "|". A number the zone data does not place gets UTC.
func (q QuietHours) ZoneGroup(phone string) string {
	if q.Timezone != "" {
		return q.Timezone
	}
	zones, err := phonenumbers.GetTimezonesForPrefix(phone)
	var known []string
	if err == nil {
		for _, z := range zones {
			if _, err := location(z); err == nil {
				known = append(known, z)
			}
		}
	}
	if len(known) == 0 {
		return "UTC"
	}
	slices.Sort(known)
	return strings.Join(slices.Compact(known), "|")
}

// QuietAt reports whether t falls in the quiet hours of any zone of group, and,
// if so, when every zone of the group is out of them: the strictest reading of
// a number that may be in several zones.
func (q QuietHours) QuietAt(group string, t time.Time) (quiet bool, opensAt time.Time) {
	zones := strings.Split(group, "|")
	at := t
	// Each step moves to the end of one zone's window; a handful settle it.
	for range 2*len(zones) + 2 {
		moved := false
		for _, z := range zones {
			if end, in := q.windowEnd(z, at); in {
				at, moved = end, true
			}
		}
		if !moved {
			break
		}
	}
	return at.After(t), at
}

// windowEnd reports whether t is in zone's quiet window and when that window
// ends: the first time after t that the zone's clocks read End.
func (q QuietHours) windowEnd(zone string, t time.Time) (time.Time, bool) {
	loc, err := location(zone)
	if err != nil {
		loc = time.UTC
	}
	start, _ := clockMinutes(q.Start)
	end, _ := clockMinutes(q.End)
	local := t.In(loc)
	now := local.Hour()*60 + local.Minute()
	var in bool
	if start < end {
		in = now >= start && now < end
	} else {
		in = now >= start || now < end
	}
	if !in {
		return time.Time{}, false
	}
	// Today's End, or tomorrow's once today's has passed. On the night the
	// clocks fall back over End they read it twice, and the window ends at the
	// reading after t: the second, when t is in the repeated hour (the first
	// is past), or today's, for a window the clocks fall back into, not
	// tomorrow's. Every day but one skipped whole has a reading.
	for day := 0; ; day++ {
		for _, at := range clockReadings(local.Year(), local.Month(), local.Day()+day, end, loc) {
			if at.After(t) {
				return at, true
			}
		}
	}
}

// clockReadings returns, in order, the instants at which loc's clocks read
// minutes after midnight on the given day: one; two on the night they fall back
// over that time; and where they spring forward over it, the jump, when they
// pass it.
func clockReadings(year int, month time.Month, day, minutes int, loc *time.Location) []time.Time {
	at := time.Date(year, month, day, minutes/60, minutes%60, 0, 0, loc)
	if clock := at.Hour()*60 + at.Minute(); clock != minutes {
		// time.Date gave an instant on one side of the jump (before it west
		// of Greenwich, after it east): the jump is the end of that zone
		// period, or its start.
		start, stop := at.ZoneBounds()
		if clock > minutes {
			return []time.Time{start}
		}
		return []time.Time{stop}
	}
	// The clock time as if in UTC, less the offset of the zone period it fell
	// in or of the periods either side: each instant at which the clocks do
	// read that time is a reading.
	wall := time.Date(year, month, day, minutes/60, minutes%60, 0, 0, time.UTC)
	start, stop := at.ZoneBounds()
	var readings []time.Time
	for _, near := range []time.Time{start.Add(-time.Second), at, stop} {
		_, offset := near.In(loc).Zone()
		r := wall.Add(-time.Duration(offset) * time.Second)
		l := r.In(loc)
		if l.YearDay() == wall.YearDay() && l.Hour()*60+l.Minute() == minutes && !slices.ContainsFunc(readings, r.Equal) {
			readings = append(readings, r)
		}
	}
	slices.SortFunc(readings, time.Time.Compare)
	return readings
}
