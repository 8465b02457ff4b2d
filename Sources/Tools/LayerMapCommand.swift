// `pagectl layer map`: a picture of a timeline's layer files and those of its ancestors.
//
// Design note
// ===========
// Offline and read-only: the tool reads `DIR/tenants/T/timelines/TL/manifest` (LSM's `Manifest`,
// which names every live layer file with its kind, chunk and LSN range) and `timeline.json` (for
// `ancestor_timeline_id` and `ancestor_lsn`), then does the same for the ancestor, up to the root.
// Nothing is written to the workdir, so it is safe to run next to a live server (it then shows the
// manifest as of the moment it was read).
//
// The SVG has one panel per timeline, the root on top and the requested timeline at the bottom.
// All panels share one x axis (LSN, linear), so a branch point lines up with its child's panel.
// Each panel's y axis lists the chunks its layers belong to, sorted as the manifest sorts them
// (kind, then tablespace/database/relation, fork, segment). A delta layer is a rectangle spanning
// its LSN range in its chunk's row; an image layer is a thin rectangle at its LSN. Every rectangle
// has a `<title>` (shown on hover) with the file name, LSN range and size. An ancestor's panel
// has a dashed vertical marker at the LSN where its child branches off.
//
// Invariants:
// 1. The SVG has exactly one `<rect>` element per layer file listed in the manifests drawn
//    (frames and markers are lines and paths), so a reader can count layers by counting rects.
// 2. Every piece of text from the workdir is XML-escaped; the file is well-formed XML.
// 3. The ancestor walk stops at `maxAncestors` timelines or a repeated id (a damaged workdir cannot
//    loop the tool).
// 4. Any problem (missing workdir, timeline or manifest, damaged manifest or timeline.json) is one
//    sentence on stderr and exit code 1; no partial SVG is left behind.

import ArgumentParser
import Foundation
import LSM

struct LayerMap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "map",
        abstract: "Draw a timeline's layer files (and its ancestors') as an SVG: chunks by LSN ranges.",
        discussion: "Reads the workdir directly (no server needed; read-only). Prints a summary per timeline.")

    @Option(help: "The page server's workdir.") var workdir: String
    @Option(help: "Tenant id (32 hex digits).") var tenant: String
    @Option(help: "Timeline id (32 hex digits).") var timeline: String
    @Option(help: "Where to write the SVG.") var svg: String

    static let maxAncestors = 1000

    func run() throws {
        guard TenantId(parsing: tenant) != nil else { fail("tenant '\(tenant)' is not 32 lower-case hex digits") }
        guard TimelineId(parsing: timeline) != nil else { fail("timeline '\(timeline)' is not 32 lower-case hex digits") }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: workdir, isDirectory: &isDirectory), isDirectory.boolValue else {
            fail("workdir \(workdir) does not exist or is not a directory")
        }
        let chain: [MappedTimeline]
        do { chain = try MappedTimeline.loadChain(workdir: workdir, tenant: tenant, timeline: timeline) } catch { fail("\(error)") }
        for t in chain.reversed() { print(t.summary) }
        let text = LayerMapSVG(timelines: chain).render()
        do {
            try text.write(toFile: svg, atomically: true, encoding: .utf8)
        } catch {
            fail("cannot write \(svg): \(error.localizedDescription)")
        }
        print("wrote \(svg): \(chain.count) timeline\(chain.count == 1 ? "" : "s"), \(chain.reduce(0) { $0 + $1.manifest.layers.count }) layer files")
    }
}

struct LayerMapError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// One timeline's manifest and ancestry, as read from its directory.
struct MappedTimeline {
    var id: String
    var ancestorId: String?
    var ancestorLSN: LSN?
    var startLSN: LSN?
    var manifest: Manifest
    /// Set on an ancestor: where its child (the next timeline down the chain) branches off.
    var childBranch: (id: String, lsn: LSN)?
    var isRequested = false

    var totalBytes: UInt64 { manifest.layers.reduce(0) { $0 + $1.fileSize } }

    /// The requested timeline and its ancestors, root first.
    static func loadChain(workdir: String, tenant: String, timeline: String) throws -> [MappedTimeline] {
        var chain: [MappedTimeline] = []
        var seen = Set<String>()
        var next: String? = timeline
        while let id = next {
            guard seen.insert(id).inserted else { throw LayerMapError("the ancestors of timeline \(timeline) form a loop at \(id); timeline.json is damaged") }
            guard chain.count < LayerMap.maxAncestors else { throw LayerMapError("timeline \(timeline) has more than \(LayerMap.maxAncestors) ancestors") }
            var t = try load(workdir: workdir, tenant: tenant, timeline: id, childOf: chain.last?.id)
            if chain.isEmpty { t.isRequested = true }
            if let child = chain.last, let lsn = child.ancestorLSN { t.childBranch = (child.id, lsn) }
            chain.append(t)
            next = t.ancestorId
        }
        return chain.reversed()
    }

    static func load(workdir: String, tenant: String, timeline: String, childOf child: String?) throws -> MappedTimeline {
        let dir = workdir + "/tenants/\(tenant)/timelines/\(timeline)"
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDirectory), isDirectory.boolValue else {
            if let child { throw LayerMapError("timeline \(timeline), the ancestor of \(child), is missing: no directory \(dir)") }
            if !FileManager.default.fileExists(atPath: workdir + "/tenants/\(tenant)") {
                throw LayerMapError("tenant \(tenant) not found in \(workdir): no directory \(workdir)/tenants/\(tenant)")
            }
            throw LayerMapError("timeline \(timeline) of tenant \(tenant) not found: no directory \(dir)")
        }
        let manifestPath = dir + "/" + Manifest.fileName
        guard let manifestData = FileManager.default.contents(atPath: manifestPath) else {
            throw LayerMapError("cannot read \(manifestPath): the timeline has no manifest")
        }
        let manifest: Manifest
        do { manifest = try Manifest(parsing: [UInt8](manifestData), file: manifestPath) } catch {
            throw LayerMapError("\(manifestPath) is not a valid manifest: \(error)")
        }
        let metaPath = dir + "/timeline.json"
        guard let metaData = FileManager.default.contents(atPath: metaPath) else {
            throw LayerMapError("cannot read \(metaPath): the timeline has no metadata")
        }
        guard let meta = (try? JSONSerialization.jsonObject(with: metaData)) as? [String: Any] else {
            throw LayerMapError("\(metaPath) is not a JSON object")
        }
        func lsn(_ field: String) throws -> LSN? {
            guard let v = meta[field], !(v is NSNull) else { return nil }
            guard let s = v as? String, let l = LSN(parsing: s) else { throw LayerMapError("\(metaPath): \(field) is not an LSN like 0/16B3748") }
            return l
        }
        var ancestor: String?
        if let v = meta["ancestor_timeline_id"], !(v is NSNull) {
            guard let s = v as? String, TimelineId(parsing: s) != nil else {
                throw LayerMapError("\(metaPath): ancestor_timeline_id is not 32 lower-case hex digits")
            }
            ancestor = s
        }
        return MappedTimeline(id: timeline, ancestorId: ancestor, ancestorLSN: ancestor == nil ? nil : try lsn("ancestor_lsn"),
                              startLSN: try lsn("start_lsn"), manifest: manifest)
    }

    var summary: String {
        let layers = manifest.layers
        let deltas = layers.filter { $0.layer.kind == .delta }.count
        var lines = ["timeline \(id)" + (isRequested ? " (requested)" : "") + (ancestorId.map { ", branched from \($0) at \(ancestorLSN.map { "\($0)" } ?? "?")" } ?? ", root")]
        lines.append("  layers: \(layers.count) (\(deltas) delta, \(layers.count - deltas) image), \(totalBytes) bytes, \(Set(layers.map(\.layer.chunk)).count) chunks")
        if let lo = layers.map(\.layer.lsnStart).min(), let hi = layers.map(\.layer.lsnEnd).max() {
            lines.append("  lsn range: \(lo) .. \(hi) (end exclusive); disk_consistent_lsn \(manifest.diskConsistentLSN), gc_cutoff_lsn \(manifest.gcCutoffLSN)")
        } else {
            lines.append("  no layer files; disk_consistent_lsn \(manifest.diskConsistentLSN)")
        }
        return lines.joined(separator: "\n")
    }
}

/// Renders the chain as SVG (see the design note for the layout).
struct LayerMapSVG {
    let timelines: [MappedTimeline]

    // Geometry, in pixels.
    static let width = 1400.0
    static let labelWidth = 230.0
    static let rightMargin = 30.0
    static let panelHeader = 46.0
    static let axisHeight = 34.0
    static let panelGap = 24.0
    static let maxRowHeight = 16.0
    static let minRowHeight = 3.0
    /// Panels taller than this shrink their rows (down to `minRowHeight`).
    static let maxPlotHeight = 1600.0
    static let imageWidth = 4.0
    static let minDeltaWidth = 4.0

    var plotWidth: Double { Self.width - Self.labelWidth - Self.rightMargin }

    /// The LSN range every panel's x axis shows: from the oldest start LSN (a base backup's layers
    /// begin at 0/1 but hold values only from the start LSN on, so they are drawn from the left edge),
    /// or the oldest layer when no start LSN is known, to the newest layer end or branch point.
    let lsnRange: (lo: UInt64, hi: UInt64)

    init(timelines: [MappedTimeline]) {
        self.timelines = timelines
        var lo = UInt64.max, hi = UInt64.min
        for t in timelines {
            for e in t.manifest.layers {
                lo = min(lo, e.layer.lsnStart.rawValue)
                hi = max(hi, e.layer.lsnEnd.rawValue)
            }
            for l in [t.ancestorLSN, t.childBranch?.lsn].compactMap({ $0 }) where l.rawValue > 0 { hi = max(hi, l.rawValue) }
        }
        if let start = timelines.compactMap(\.startLSN).filter({ $0.rawValue > 0 }).min() { lo = start.rawValue }
        if lo == UInt64.max { lo = 0 }
        lsnRange = hi > lo ? (lo, hi) : (lo, lo + 1)
    }

    func x(_ lsn: UInt64) -> Double {
        let (lo, hi) = lsnRange
        let clamped = min(max(lsn, lo), hi)  // layers that begin before the axis start at its left edge
        return Self.labelWidth + Double(clamped - lo) / Double(hi - lo) * plotWidth
    }

    func render() -> String {
        var body = ""
        var y = 20.0
        body += text(x: 10, y: y, "Layer files of timeline \(timelines.last?.id ?? "") and its ancestors (root on top); x: LSN, y: chunk", cls: "title")
        y += 16
        for t in timelines { y = panel(t, top: y, into: &body) + Self.panelGap }
        let height = y
        var out = """
        <?xml version="1.0" encoding="UTF-8"?>
        <svg xmlns="http://www.w3.org/2000/svg" width="\(fmt(Self.width))" height="\(fmt(height))" viewBox="0 0 \(fmt(Self.width)) \(fmt(height))">
        <style>
        text { font-family: monospace; font-size: 11px; fill: #222; }
        .title { font-size: 14px; font-weight: bold; }
        .head { font-size: 12px; font-weight: bold; }
        .chunk { font-size: 10px; fill: #444; }
        .tick { font-size: 10px; fill: #555; }
        .delta { fill: #6a9fd8; fill-opacity: 0.75; stroke: #1f4e85; stroke-width: 0.5; }
        .image { fill: #d8722a; stroke: #8a3e0c; stroke-width: 0.5; }
        .frame { stroke: #999; fill: none; stroke-width: 1; }
        .grid { stroke: #e4e4e4; stroke-width: 1; }
        .branch { stroke: #c0183c; stroke-width: 1.5; stroke-dasharray: 6 3; }
        .branchlabel { fill: #c0183c; font-size: 10px; }
        </style>

        """
        out += body
        out += "</svg>\n"
        return out
    }

    /// Draws one panel with its top edge at `top`; returns its bottom edge.
    private func panel(_ t: MappedTimeline, top: Double, into out: inout String) -> Double {
        let chunks = Array(Set(t.manifest.layers.map(\.layer.chunk))).sorted()
        let rows = max(chunks.count, 1)
        let rowHeight = max(Self.minRowHeight, min(Self.maxRowHeight, Self.maxPlotHeight / Double(rows)))
        let plotTop = top + Self.panelHeader
        let plotBottom = plotTop + Double(rows) * rowHeight
        let left = Self.labelWidth, right = Self.labelWidth + plotWidth

        var role = t.isRequested ? "requested timeline" : "ancestor"
        if t.ancestorId == nil { role += ", root" }
        out += text(x: 10, y: top + 16, "timeline \(t.id) - \(role)", cls: "head")
        var detail = t.ancestorId.map { "branched from \($0) at \(t.ancestorLSN.map { "\($0)" } ?? "?")" } ?? "no ancestor"
        if let s = t.startLSN { detail += "; start \(s)" }
        detail += "; disk_consistent \(t.manifest.diskConsistentLSN); \(t.manifest.layers.count) layers, \(t.totalBytes) bytes"
        out += text(x: 10, y: top + 32, detail, cls: "tick")

        // Row labels and grid lines (only when the rows are tall enough to read).
        let index = Dictionary(uniqueKeysWithValues: chunks.enumerated().map { ($1, $0) })
        if rowHeight >= 9 {
            for (i, c) in chunks.enumerated() {
                let rowTop = plotTop + Double(i) * rowHeight
                out += text(x: left - 6, y: rowTop + rowHeight * 0.75, "\(c)", cls: "chunk", anchor: "end")
                out += "<line class=\"grid\" x1=\"\(fmt(left))\" y1=\"\(fmt(rowTop + rowHeight))\" x2=\"\(fmt(right))\" y2=\"\(fmt(rowTop + rowHeight))\"/>\n"
            }
        } else {
            out += text(x: left - 6, y: plotTop + 10, "\(chunks.count) chunks", cls: "chunk", anchor: "end")
        }
        out += "<path class=\"frame\" d=\"M\(fmt(left)) \(fmt(plotTop)) H\(fmt(right)) V\(fmt(plotBottom)) H\(fmt(left)) Z\"/>\n"

        // One rect per layer file (invariant 1).
        for e in t.manifest.layers {
            let d = e.layer
            guard let row = index[d.chunk] else { continue }
            let rowTop = plotTop + Double(row) * rowHeight + 1
            let h = max(rowHeight - 2, 1)
            let x0 = x(d.lsnStart.rawValue)
            let w: Double
            let xPos: Double
            if d.kind == .image {
                w = Self.imageWidth
                xPos = x0 - w / 2
            } else {
                w = max(x(d.lsnEnd.rawValue) - x0, Self.minDeltaWidth)
                xPos = x0
            }
            let range = d.kind == .image ? "at \(d.lsnStart)" : "\(d.lsnStart) .. \(d.lsnEnd)"
            out += "<rect class=\"\(d.kind)\" data-file=\"\(escape(d.fileName))\" x=\"\(fmt(xPos))\" y=\"\(fmt(rowTop))\" width=\"\(fmt(w))\" height=\"\(fmt(h))\">"
            out += "<title>\(escape("\(d.fileName)\n\(d.kind) layer, chunk \(d.chunk), LSN \(range), \(e.fileSize) bytes"))</title></rect>\n"
        }

        // Where the child branches off.
        if let b = t.childBranch {
            let bx = x(b.lsn.rawValue)
            out += "<line class=\"branch\" x1=\"\(fmt(bx))\" y1=\"\(fmt(plotTop - 6))\" x2=\"\(fmt(bx))\" y2=\"\(fmt(plotBottom + 6))\"/>\n"
            out += text(x: bx + 4, y: plotTop - 8, "branch point of \(b.id) at \(b.lsn)", cls: "branchlabel")
        }

        // The LSN axis.
        let (lo, hi) = lsnRange
        let ticks = 5
        for i in 0...ticks {
            let lsn = lo + (hi - lo) / UInt64(ticks) * UInt64(i)
            let tx = x(lsn)
            out += "<line class=\"frame\" x1=\"\(fmt(tx))\" y1=\"\(fmt(plotBottom))\" x2=\"\(fmt(tx))\" y2=\"\(fmt(plotBottom + 5))\"/>\n"
            out += text(x: tx, y: plotBottom + 17, "\(LSN(lsn))", cls: "tick", anchor: i == 0 ? "start" : i == ticks ? "end" : "middle")
        }
        return plotBottom + Self.axisHeight
    }

    private func text(x: Double, y: Double, _ s: String, cls: String, anchor: String = "start") -> String {
        "<text class=\"\(cls)\" x=\"\(fmt(x))\" y=\"\(fmt(y))\" text-anchor=\"\(anchor)\">\(escape(s))</text>\n"
    }

    private func escape(_ s: String) -> String {
        var out = ""
        for ch in s {
            switch ch {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default: out.append(ch)
            }
        }
        return out
    }

    private func fmt(_ v: Double) -> String { String(format: "%.1f", v) }
}
