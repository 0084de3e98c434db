// Package domain holds the Batch aggregate, its events and snapshots, template
// variables, phone numbers, priorities and rates, and error categories. Pure Go:
// no I/O, no clocks; time is passed in.
package domain
