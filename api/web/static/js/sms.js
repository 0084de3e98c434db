// Template helpers that mirror the server's rules (domain/template.go and
// domain/segments.go), so the form shows what the API will decide.

const placeholder = /\{\{[ \t]*([A-Za-z_][A-Za-z0-9_.-]*)[ \t]*\}\}/g;

// variables returns the distinct {{name}} placeholders in order of first appearance.
export function variables(text) {
  const seen = [];
  for (const m of text.matchAll(placeholder)) {
    if (!seen.includes(m[1])) seen.push(m[1]);
  }
  return seen;
}

// The non-ASCII characters of GSM 03.38's basic set; ASCII ones are listed below.
const gsmBasic = new Set(
  "@$\n\r_ !\"#%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" +
    "£¥èéùìòÇØøÅåΔΦΓΛΩΠΨΣΘΞÆæßÉ¤¡ÄÖÑÜ§¿äöñüà",
);
// The extension table, sent as ESC + character: two septets each.
const gsmExtension = new Set("\f^{}\\[~]|€");

function septets(ch) {
  if (gsmBasic.has(ch)) return 1;
  if (gsmExtension.has(ch)) return 2;
  return 0;
}

// count splits units (the width of each character) into segments as phones do: a
// character never straddles two parts of a concatenated message.
function count(units, single, concatenated) {
  let total = 0;
  let parts = 1;
  let current = 0;
  for (const w of units) {
    total += w;
    if (current + w > concatenated) {
      parts++;
      current = 0;
    }
    current += w;
  }
  return { units: total, segments: total <= single ? 1 : parts };
}

// segments returns {encoding, units, segments} for text: GSM-7 (160 per message,
// 153 per part) when every character is in the GSM alphabet, otherwise UCS-2
// counted in UTF-16 code units (70, or 67 per part).
export function segments(text) {
  const chars = Array.from(text);
  const gsm = chars.map(septets);
  if (gsm.every((w) => w > 0)) {
    return { encoding: "GSM-7", ...count(gsm, 160, 153) };
  }
  const utf16 = chars.map((c) => c.length);
  return { encoding: "UCS-2", ...count(utf16, 70, 67) };
}
