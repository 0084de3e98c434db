package domain

import (
	"strings"
	"testing"
)

func TestSegments(t *testing.T) {
	a := func(n int) string { return strings.Repeat("a", n) }
	zh := func(n int) string { return strings.Repeat("ж", n) } // not GSM-7, one UTF-16 unit
	tests := []struct {
		name     string
		text     string
		encoding Encoding
		segments int
	}{
		{name: "empty text is still one SMS", text: "", encoding: EncodingGSM7, segments: 1},
		{name: "short GSM", text: "Hello @ $ £ ¥ è é Ä ñ § ¿ à Δ Ω ß", encoding: EncodingGSM7, segments: 1},
		{name: "160 GSM chars fit one segment", text: a(160), encoding: EncodingGSM7, segments: 1},
		{name: "161 GSM chars need two", text: a(161), encoding: EncodingGSM7, segments: 2},
		{name: "153*2 GSM chars fill two", text: a(153 * 2), encoding: EncodingGSM7, segments: 2},
		{name: "153*2+1 GSM chars need three", text: a(153*2 + 1), encoding: EncodingGSM7, segments: 3},
		{name: "GSM non-ASCII basic chars count 1", text: strings.Repeat("é", 160), encoding: EncodingGSM7, segments: 1},
		{name: "extension char counts 2: 159+€ is 161 septets", text: a(159) + "€", encoding: EncodingGSM7, segments: 2},
		{name: "extension char counts 2: 158+€ is 160 septets", text: a(158) + "€", encoding: EncodingGSM7, segments: 1},
		{name: "80 extension chars are 160 septets", text: strings.Repeat("[", 80), encoding: EncodingGSM7, segments: 1},
		{name: "81 extension chars are 162 septets", text: strings.Repeat("]", 81), encoding: EncodingGSM7, segments: 2},
		{name: "every extension char counts 2", text: strings.Repeat("^{}\\[~]|€\f", 8), encoding: EncodingGSM7, segments: 1},
		{name: "every extension char counts 2, one more", text: strings.Repeat("^{}\\[~]|€\f", 8) + "a", encoding: EncodingGSM7, segments: 2},
		{name: "€ ending exactly at the first boundary", text: a(151) + "€" + a(153), encoding: EncodingGSM7, segments: 2},
		// 306 septets would fit two segments of 153, but the € cannot be split
		// over septets 153 and 154, so it starts segment two and pushes one out.
		{name: "€ across the first boundary moves to the next segment", text: a(152) + "€" + a(152), encoding: EncodingGSM7, segments: 3},
		{name: "€ across the boundary, still fits", text: a(152) + "€" + a(151), encoding: EncodingGSM7, segments: 2},
		{name: "one non-GSM char makes the whole text UCS-2", text: a(69) + "ж", encoding: EncodingUCS2, segments: 1},
		{name: "lowercase ç is not GSM-7 (only Ç is)", text: "ç", encoding: EncodingUCS2, segments: 1},
		{name: "backtick is not GSM-7", text: "`", encoding: EncodingUCS2, segments: 1},
		{name: "tab is not GSM-7", text: "\t", encoding: EncodingUCS2, segments: 1},
		{name: "GSM text of 160 with one non-GSM char", text: a(159) + "ж", encoding: EncodingUCS2, segments: 3},
		{name: "70 UCS-2 units fit one segment", text: zh(70), encoding: EncodingUCS2, segments: 1},
		{name: "71 UCS-2 units need two", text: zh(71), encoding: EncodingUCS2, segments: 2},
		{name: "67*2 UCS-2 units fill two", text: zh(67 * 2), encoding: EncodingUCS2, segments: 2},
		{name: "67*2+1 UCS-2 units need three", text: zh(67*2 + 1), encoding: EncodingUCS2, segments: 3},
		{name: "€ in UCS-2 counts 1", text: zh(69) + "€", encoding: EncodingUCS2, segments: 1},
		{name: "one emoji", text: "👋", encoding: EncodingUCS2, segments: 1},
		{name: "35 emoji are 70 units", text: strings.Repeat("👋", 35), encoding: EncodingUCS2, segments: 1},
		{name: "36 emoji are 72 units", text: strings.Repeat("👋", 36), encoding: EncodingUCS2, segments: 2},
		{name: "emoji at 69-70 fits one segment", text: zh(68) + "👋", encoding: EncodingUCS2, segments: 1},
		{name: "emoji at 70-71 needs two", text: zh(69) + "👋", encoding: EncodingUCS2, segments: 2},
		// 134 units would fit two segments of 67, but the surrogate pair cannot
		// be split over units 67 and 68.
		{name: "emoji across the first boundary moves to the next segment", text: zh(66) + "👋" + zh(66), encoding: EncodingUCS2, segments: 3},
		{name: "emoji ending exactly at the first boundary", text: zh(65) + "👋" + zh(67), encoding: EncodingUCS2, segments: 2},
		{name: "invalid UTF-8 forces UCS-2", text: "abc\xff", encoding: EncodingUCS2, segments: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			enc, n := Segments(tt.text)
			if enc != tt.encoding || n != tt.segments {
				t.Errorf("Segments(%d runes) = %s, %d; want %s, %d", len([]rune(tt.text)), enc, n, tt.encoding, tt.segments)
			}
		})
	}
}

// TestGSM7Alphabet checks the character table against GSM 03.38 as a whole: every
// character of the basic set counts 1, every character of the extension table 2,
// and nothing else in the Basic Multilingual Plane is taken for GSM-7.
func TestGSM7Alphabet(t *testing.T) {
	// The basic set, row by row as the standard prints it, without ESC (0x1B).
	basic := "@£$¥èéùìòÇ\nØø\rÅå" +
		"Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ" +
		" !\"#¤%&'()*+,-./" +
		"0123456789:;<=>?" +
		"¡ABCDEFGHIJKLMNO" +
		"PQRSTUVWXYZÄÖÑÜ§" +
		"¿abcdefghijklmno" +
		"pqrstuvwxyzäöñüà"
	extension := "\f^{}\\[~]|€"
	want := map[rune]int{}
	for _, r := range basic {
		want[r] = 1
	}
	for _, r := range extension {
		want[r] = 2
	}
	if len(want) != 127+10 {
		t.Fatalf("test table has %d characters, want 137", len(want))
	}
	for r := rune(0); r <= 0xFFFF; r++ {
		if got := gsm7Septets(r); got != want[r] {
			t.Errorf("gsm7Septets(%q) = %d, want %d", r, got, want[r])
		}
	}
}

func BenchmarkSegments(b *testing.B) {
	texts := map[string]string{
		"GSM-7": "Hi Ada, your order A-102938 ships on 12 March. Track it at https://example.com/t/A-102938 or reply STOP to opt out. {€}",
		"UCS-2": "Привет, Ада! Ваш заказ A-102938 отправлен 12 марта. Отследить: https://example.com/t/A-102938 👋",
	}
	for name, text := range texts {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Segments(text)
			}
		})
	}
}
