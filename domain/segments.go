package domain

// Encoding is how an SMS carries its text: the 7-bit GSM alphabet when every
// character is in it, UCS-2 (in practice UTF-16) otherwise.
type Encoding string

// The encodings Segments reports.
const (
	EncodingGSM7 Encoding = "GSM-7"
	EncodingUCS2 Encoding = "UCS-2"
)

// Segment capacities. A concatenated message spends part of each segment on the
// user data header that tells the phone how to join them, hence 153 and 67.
const (
	gsm7Single       = 160 // septets in a message of one segment
	gsm7Concatenated = 153 // septets per segment of a longer message
	ucs2Single       = 70  // UTF-16 code units in a message of one segment
	ucs2Concatenated = 67  // UTF-16 code units per segment of a longer message
)

// gsm7ASCII gives the septets each ASCII character takes in GSM-7: 1 for the basic
// character set, 2 for the extension table (sent as ESC + character), 0 for
// characters GSM-7 cannot carry.
var gsm7ASCII = func() (t [128]uint8) {
	const basic = "@$\n\r_ !\"#%&'()*+,-./0123456789:;<=>?" +
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	for i := 0; i < len(basic); i++ {
		t[basic[i]] = 1
	}
	for _, c := range "\f^{}\\[~]|" {
		t[c] = 2
	}
	return t
}()

// gsm7Septets returns the septets r takes in GSM-7, or 0 if GSM-7 cannot carry it.
// The non-ASCII part of GSM 03.38's basic set is listed in full; € is the only
// non-ASCII character of the extension table. National language shift tables
// (Turkish, Spanish, Portuguese, ...) are not used: few providers support them.
func gsm7Septets(r rune) int {
	if r < 128 {
		return int(gsm7ASCII[r])
	}
	switch r {
	case '£', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', 'Ø', 'ø', 'Å', 'å',
		'Δ', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ',
		'Æ', 'æ', 'ß', 'É', '¤', '¡', 'Ä', 'Ö', 'Ñ', 'Ü', '§',
		'¿', 'ä', 'ö', 'ñ', 'ü', 'à':
		return 1
	case '€':
		return 2
	}
	return 0
}

// Segments returns the encoding an SMS carrying text uses and how many segments
// (billable SMS) it takes. A concatenated message never splits a GSM-7 escape
// sequence or a UTF-16 surrogate pair across two segments, as phones and providers
// do, so such a character at a boundary moves whole to the next segment.
//
// Empty text is one GSM-7 segment: a provider still sends, and bills, one SMS.
// Invalid UTF-8 counts as U+FFFD, which forces UCS-2.
func Segments(text string) (Encoding, int) {
	if n, ok := gsm7Segments(text); ok {
		return EncodingGSM7, n
	}
	return EncodingUCS2, ucs2Segments(text)
}

// gsm7Segments counts segments if GSM-7 can carry all of text; ok is false if not.
func gsm7Segments(text string) (n int, ok bool) {
	total, segments, current := 0, 1, 0
	for _, r := range text {
		w := gsm7Septets(r)
		if w == 0 {
			return 0, false
		}
		total += w
		if current+w > gsm7Concatenated {
			segments++
			current = 0
		}
		current += w
	}
	if total <= gsm7Single {
		return 1, true
	}
	return segments, true
}

// ucs2Segments counts segments of text sent as UTF-16. Strictly UCS-2 cannot carry
// a rune outside the Basic Multilingual Plane (most emoji); every provider sends
// UTF-16 instead, where such a rune takes two code units.
func ucs2Segments(text string) int {
	total, segments, current := 0, 1, 0
	for _, r := range text {
		w := 1
		if r > 0xFFFF {
			w = 2
		}
		total += w
		if current+w > ucs2Concatenated {
			segments++
			current = 0
		}
		current += w
	}
	if total <= ucs2Single {
		return 1
	}
	return segments
}
