// The throughput chart: one stacked bar per time bucket (sent green, failed red),
// drawn as inline SVG.

const ns = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const e = document.createElementNS(ns, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

const clock = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });

export function throughputChart(svg, points) {
  const W = 800;
  const H = 220;
  const pad = { l: 40, r: 10, t: 10, b: 24 };
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.replaceChildren();
  const total = points.reduce((s, p) => s + p.sent + p.failed, 0);
  svg.setAttribute(
    "aria-label",
    points.length ? `Throughput over ${points.length} intervals, ${total} outcomes` : "No throughput yet",
  );
  const x0 = pad.l;
  const y0 = H - pad.b;
  const w = W - pad.l - pad.r;
  const hgt = H - pad.t - pad.b;
  svg.append(el("line", { x1: x0, y1: y0, x2: W - pad.r, y2: y0, class: "axis" }));
  svg.append(el("line", { x1: x0, y1: pad.t, x2: x0, y2: y0, class: "axis" }));
  if (!points.length) {
    svg.append(el("text", { x: x0 + w / 2, y: pad.t + hgt / 2, "text-anchor": "middle" }, "No messages sent yet"));
    return;
  }
  const top = Math.max(1, ...points.map((p) => p.sent + p.failed));
  svg.append(el("text", { x: x0 - 6, y: pad.t + 10, "text-anchor": "end" }, top));
  svg.append(el("text", { x: x0 - 6, y: y0, "text-anchor": "end" }, 0));
  const slot = w / points.length;
  const bw = Math.max(1, Math.min(slot * 0.8, 48));
  points.forEach((p, i) => {
    const x = x0 + i * slot + (slot - bw) / 2;
    const hs = (p.sent / top) * hgt;
    const hf = (p.failed / top) * hgt;
    const title = `${clock.format(new Date(p.time))}: ${p.sent} sent, ${p.failed} failed`;
    const g = el("g", {});
    g.append(el("title", {}, title));
    g.append(el("rect", { x, y: y0 - hs, width: bw, height: hs, class: "sent" }));
    g.append(el("rect", { x, y: y0 - hs - hf, width: bw, height: hf, class: "failed" }));
    svg.append(g);
  });
  svg.append(el("text", { x: x0, y: H - 6 }, clock.format(new Date(points[0].time))));
  svg.append(
    el("text", { x: W - pad.r, y: H - 6, "text-anchor": "end" }, clock.format(new Date(points[points.length - 1].time))),
  );
}
