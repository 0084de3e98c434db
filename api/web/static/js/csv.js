// CSV reading for the recipients box: RFC 4180 fields (quoted fields may hold
// commas, quotes doubled, and line breaks), either line ending.

// parse returns the records of text, each with the 1-based line it starts on.
export function parse(text) {
  const records = [];
  let field = "";
  let record = [];
  let quoted = false;
  let line = 1;
  let start = 1;
  let i = 0;
  const endRecord = () => {
    record.push(field);
    field = "";
    if (!(record.length === 1 && record[0].trim() === "")) {
      records.push({ line: start, fields: record });
    }
    record = [];
  };
  if (text.charCodeAt(0) === 0xfeff) i = 1; // a byte-order mark from spreadsheets
  for (; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i++;
        } else {
          quoted = false;
        }
      } else {
        if (c === "\n") line++;
        field += c;
      }
      continue;
    }
    if (c === '"' && field.trim() === "") {
      quoted = true;
      field = "";
    } else if (c === ",") {
      record.push(field);
      field = "";
    } else if (c === "\r" || c === "\n") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      endRecord();
      line++;
      start = line;
    } else {
      field += c;
    }
  }
  if (field !== "" || record.length > 0) endRecord();
  return records;
}

// recipients reads a CSV with a header row naming a phoneNumber column and one
// column per variable. It returns the recipients, the CSV line of each (to point
// the API's recipients[i] problems at the right row) and problems found locally.
export function recipients(text) {
  const records = parse(text);
  const out = { recipients: [], lines: [], columns: [], problems: [] };
  if (records.length === 0) return out;
  const header = records[0].fields.map((h) => h.trim());
  out.columns = header;
  const phone = header.findIndex((h) => h.toLowerCase() === "phonenumber");
  if (phone < 0) {
    out.problems.push({ line: records[0].line, problem: 'the header row has no "phoneNumber" column' });
    return out;
  }
  for (const rec of records.slice(1)) {
    if (rec.fields.length !== header.length) {
      out.problems.push({
        line: rec.line,
        problem: `has ${rec.fields.length} fields, the header has ${header.length}`,
      });
    }
    const variables = {};
    header.forEach((name, i) => {
      if (i !== phone && name !== "" && i < rec.fields.length) variables[name] = rec.fields[i];
    });
    out.recipients.push({ phoneNumber: (rec.fields[phone] || "").trim(), variables });
    out.lines.push(rec.line);
  }
  return out;
}
