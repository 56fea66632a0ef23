"""Plots: the live view (I-V loops by cycle, I(t), V(t), G(t), a metric) and the history
overlay, built on pyqtgraph so that 10^6 points stay fast.

Speed and memory (PyMeasure #333, #1076, #626 are the complaints we design against):

- the time plots, while they follow a run, draw a min/max envelope of 512 to 1024 buckets
  kept up to date in O(new points) per frame (:class:`Envelope`): at screen resolution it is
  the same picture as every point, at the same cost for 10^3 or 10^7 points. Once the user
  zooms or pans, they get the points themselves with pyqtgraph's peak downsampling and
  clip-to-view (``setDownsampling(auto=True, method="peak")``, ``setClipToView(True)``);
- the I-V plot cannot downsample along x (the voltage goes back and forth), so the newest
  cycles are drawn in full, one colour each, and every earlier cycle goes into a grey
  density image (:class:`Density`) of fixed size;
- the data live in preallocated ring buffers (gui.live), so memory is bounded however
  long the run; every point stays in the database;
- the window ticks every few milliseconds and each tick redraws one plot, the next stale one
  in turn, none more often than :data:`MAX_PLOT_FPS`: the event loop is never held for
  more than one plot's work, and the plots use whatever time the loop has (on a quiet
  machine every plot reaches the cap; under load the rate falls evenly for all five).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pyqtgraph as pg
from labctl.gui.live import LiveModel
from labctl.gui.units import fmt_si
from PyQt5.QtCore import QRectF, Qt
from PyQt5.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGraphicsItem,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

pg.setConfigOptions(antialias=False, background="w", foreground="k")

# Colour-blind-safe categorical palette (Okabe-Ito without black), one colour per cycle
PALETTE = [
    (0, 114, 178),
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (230, 159, 0),
    (86, 180, 233),
    (240, 228, 66),
    (120, 94, 240),
    (153, 153, 153),
    (100, 60, 30),
]
RECENT_CYCLES = 8  # cycles drawn in colour; older ones go into the density image
OVERLAY_BUDGET = 200_000  # points of one run's I-V in the history overlay at most
RECENT_BUDGET = 20_000  # points per coloured cycle at most
OLD_EVERY_FRAMES = 8  # earlier cycles are updated every 8th frame (~4 times a second)
LEGEND_EVERY_FRAMES = 4
INFO_EVERY_S = 0.25  # texts beside the plots change 4 times a second, not every frame
MAX_PLOT_FPS = 60.0  # a plot is redrawn at most this often (a display refreshes at 60 Hz)
METRIC_SYMBOLS_MAX = 1000  # symbols in the metric plot at most (every k-th point beyond: ~2 ms)


def colour(k: int) -> tuple[int, int, int]:
    return PALETTE[k % len(PALETTE)]


def stride_view(a: np.ndarray, budget: int) -> np.ndarray:
    """Every k-th element so that at most ``budget`` remain (a view, no copy)."""
    if len(a) <= budget:
        return a
    return a[:: math.ceil(len(a) / budget)]


class QuietAxis(pg.AxisItem):
    """An axis that re-renders its label only when the label text changes.

    pyqtgraph re-sets the label (HTML layout, about a millisecond) whenever the range
    changes, i.e. every frame of a live plot, even when the SI prefix stays the same.
    """

    _label_html = None

    def _updateLabel(self) -> None:
        html = self.labelString()
        if html != self._label_html:
            self._label_html = html
            self.label.setHtml(html)
            self._adjustSize()
        self.picture = None
        self.update()


def make_plot(title: str, x: str, x_unit: str, y: str, y_unit: str) -> pg.PlotWidget:
    w = pg.PlotWidget(axisItems={"left": QuietAxis("left"), "bottom": QuietAxis("bottom")})
    item = w.getPlotItem()
    item.setTitle(title, size="10pt")
    item.setLabel("bottom", x, units=x_unit)
    item.setLabel("left", y, units=y_unit)
    item.showGrid(x=True, y=True, alpha=0.25)
    # major and minor ticks and grid lines only along x: the finest level costs about a
    # millisecond a frame per axis (short y axes keep it, or they may show one label only)
    item.getAxis("bottom").setStyle(maxTickLevel=1)
    for side in ("left", "bottom"):
        # an axis (with its grid) is redrawn only when its range or size changes; between
        # those, each paint blits the cached pixels instead of replaying ticks and labels
        item.getAxis(side).setCacheMode(QGraphicsItem.DeviceCoordinateCache)
    item.setMenuEnabled(True)
    w.setMinimumSize(220, 160)
    # the view paints every pixel: without this, each frame would also repaint the widgets
    # behind it, and with them (through the merged dirty region) most of the window
    w.viewport().setAttribute(Qt.WA_OpaquePaintEvent, True)
    w.setAttribute(Qt.WA_OpaquePaintEvent, True)
    return w


def time_curve(plot: pg.PlotWidget, pen, name: str | None = None) -> pg.PlotDataItem:
    """A curve against time: peak downsampling and clip-to-view keep 10^6 points fast."""
    curve = plot.plot(pen=pen, name=name)
    curve.setDownsampling(auto=True, method="peak")
    curve.setClipToView(True)
    return curve


class CursorReadout:
    """Crosshair and 'x = ..., y = ...' read-out (with units) under a plot."""

    def __init__(self, plot: pg.PlotWidget, label: QLabel, x_unit: str, y_unit: str) -> None:
        self.plot = plot
        self.label = label
        self.x_unit = x_unit
        self.y_unit = y_unit
        pen = pg.mkPen((120, 120, 120), style=Qt.DashLine)
        self.vline = pg.InfiniteLine(angle=90, movable=False, pen=pen)
        self.hline = pg.InfiniteLine(angle=0, movable=False, pen=pen)
        for line in (self.vline, self.hline):
            line.setVisible(False)
            plot.addItem(line, ignoreBounds=True)
        plot.scene().sigMouseMoved.connect(self._moved)

    def _moved(self, pos) -> None:
        vb = self.plot.getPlotItem().vb
        if not self.plot.sceneBoundingRect().contains(pos) or not vb.sceneBoundingRect().contains(
            pos
        ):
            self.vline.setVisible(False)
            self.hline.setVisible(False)
            return
        p = vb.mapSceneToView(pos)
        self.vline.setPos(p.x())
        self.hline.setPos(p.y())
        self.vline.setVisible(True)
        self.hline.setVisible(True)
        log_x, log_y = (
            self.plot.getPlotItem().ctrl.logXCheck.isChecked(),
            (self.plot.getPlotItem().ctrl.logYCheck.isChecked()),
        )
        x = 10 ** p.x() if log_x else p.x()
        y = 10 ** p.y() if log_y else p.y()
        self.label.setText(f"x = {fmt_si(x, self.x_unit)}   y = {fmt_si(y, self.y_unit)}")


class PlotBox(QWidget):
    """A plot with its cursor read-out line underneath."""

    def __init__(self, title: str, x: str, x_unit: str, y: str, y_unit: str, parent=None) -> None:
        super().__init__(parent)
        self.plot = make_plot(title, x, x_unit, y, y_unit)
        self.readout = QLabel(" ")
        self.readout.setStyleSheet("color: #555; font-size: 9pt;")
        self.cursor = CursorReadout(self.plot, self.readout, x_unit, y_unit)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.readout)


class Envelope:
    """Min and max of consecutive buckets of a growing series, updated in O(new points).

    While a time plot follows the live data it shows the whole run; drawing an envelope of
    512 to 1024 buckets (about one per pixel column, a stroke from min to max each) looks
    the same as the points themselves at screen resolution, and costs the same at 10^3 or
    10^7 points. When the bucket count doubles past its limit, neighbours merge and buckets
    grow twice as wide.
    """

    def __init__(self, target_buckets: int = 512) -> None:
        self.cap = 2 * target_buckets
        self.clear()

    def clear(self) -> None:
        self.size = 1  # points per (full) bucket
        self.n = 0
        self.t = np.empty(self.cap)
        self.lo = np.empty(self.cap)
        self.hi = np.empty(self.cap)
        self.start = np.empty(self.cap, np.int64)  # global index of each bucket's first point
        self.pc = 0  # points in the partial (newest) bucket
        self.pt = self.plo = self.phi = 0.0
        self.ps = 0

    def _halve(self) -> None:
        n = self.n
        pairs = n // 2
        for arr, op in ((self.lo, np.fmin), (self.hi, np.fmax)):
            merged = op(arr[0 : 2 * pairs : 2], arr[1 : 2 * pairs : 2])
            if n % 2:
                merged = np.append(merged, arr[n - 1])
            arr[: len(merged)] = merged
        for arr in (self.t, self.start):
            kept = arr[0:n:2].copy()
            arr[: len(kept)] = kept
        self.n = pairs + n % 2
        self.size *= 2

    def _store(self, t, lo, hi, start) -> None:
        k = len(t)
        self.t[self.n : self.n + k] = t
        self.lo[self.n : self.n + k] = lo
        self.hi[self.n : self.n + k] = hi
        self.start[self.n : self.n + k] = start
        self.n += k

    def append(self, t: np.ndarray, y: np.ndarray, first: int) -> None:
        """Add points ``t``, ``y`` whose first has global index ``first``."""
        i, m = 0, len(y)
        while i < m:
            if self.pc == 0 and m - i >= self.size:
                if self.n == self.cap:
                    self._halve()
                k = min((m - i) // self.size, self.cap - self.n)
                end = i + k * self.size
                block = y[i:end].reshape(k, self.size)
                self._store(
                    t[i : end : self.size],
                    np.fmin.reduce(block, axis=1),
                    np.fmax.reduce(block, axis=1),
                    first + i + np.arange(k) * self.size,
                )
                i = end
                continue
            take = min(self.size - self.pc, m - i)
            seg = y[i : i + take]
            if self.pc == 0:
                self.pt, self.ps = float(t[i]), first + i
                self.plo, self.phi = np.nan, np.nan
            self.plo = float(np.fmin(self.plo, np.fmin.reduce(seg)))
            self.phi = float(np.fmax(self.phi, np.fmax.reduce(seg)))
            self.pc += take
            i += take
            if self.pc >= self.size:
                if self.n == self.cap:
                    self._halve()
                self._store([self.pt], [self.plo], [self.phi], [self.ps])
                self.pc = 0

    def drop_before(self, index: int) -> None:
        """Forget buckets wholly before global index ``index`` (left the ring buffer)."""
        if self.n < 2:
            return
        k = int(np.searchsorted(self.start[: self.n], index, side="right")) - 1
        if k > 0:
            for arr in (self.t, self.lo, self.hi, self.start):
                arr[: self.n - k] = arr[k : self.n].copy()
            self.n -= k

    def xy(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.n
        t, lo, hi = self.t[:n], self.lo[:n], self.hi[:n]
        if self.pc:
            t = np.append(t, self.pt)
            lo = np.append(lo, self.plo)
            hi = np.append(hi, self.phi)
        if self.size == 1:  # one point per bucket: the points themselves
            return t, lo
        x = np.repeat(t, 2)
        y = np.empty(2 * len(t))
        y[0::2] = lo
        y[1::2] = hi
        return x, y


def nice_ceil(x: float) -> float:
    """The smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 (x 10^k) not below ``x``."""
    if not x > 0 or not math.isfinite(x):
        return 1.0
    k = math.floor(math.log10(x))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * 10**k >= x * (1 - 1e-12):
            return m * 10**k
    return 10 ** (k + 1)


def follow_range(t_first: float, t_last: float) -> tuple[float, float]:
    """The time axis while following live data: it grows in steps (so the axis is not
    re-laid out every frame) and always shows every point held."""
    span = nice_ceil(max(t_last - t_first, 1e-9) * 1.02)
    start = math.floor(t_first / (span / 10)) * (span / 10)
    if start + span < t_last:
        span = nice_ceil((t_last - start) * 1.02)
    return start, start + span


class Trace:
    """One time curve fed from ring-buffer columns: the envelope while the plots follow the
    data, the points themselves (clipped to view, peak-downsampled by pyqtgraph) once the
    user has zoomed or panned."""

    ZOOMED_EVERY = 3  # zoomed in, the raw points are re-sent every 3rd frame (~10 Hz)

    def __init__(self, curve: pg.PlotDataItem) -> None:
        self.curve = curve
        self.env = Envelope()
        self.upto = 0  # global index of the first point not in the envelope
        self._countdown = 0

    def reset(self) -> None:
        self.env.clear()
        self.upto = 0

    def update(
        self, ring, t_name: str, y_name: str, transform=None, force=False, following=True
    ) -> None:
        total, offset = ring.total, ring.offset
        if total < self.upto:  # the ring was cleared
            self.reset()
        if self.upto < offset:  # points left the ring before being seen
            self.upto = offset
        if total > self.upto:
            t = ring.view_global(t_name, self.upto, total)
            y = ring.view_global(y_name, self.upto, total)
            self.env.append(t, y if transform is None else transform(y), self.upto)
            self.upto = total
        self.env.drop_before(offset)
        if following:
            # wide buckets: draw each min-max stroke alone, without the diagonal joining it
            # to the next (half the ink, and at one bucket per pixel column no visible gap)
            x, y = self.env.xy()
            self.curve.setData(x, y, connect="pairs" if self.env.size >= 4 else "all")
            return
        self._countdown -= 1
        if force or self._countdown <= 0:
            self._countdown = self.ZOOMED_EVERY
            y = ring.view(y_name)
            self.curve.setData(
                ring.view(t_name), y if transform is None else transform(y), connect="all"
            )


class Density:
    """Earlier I-V cycles as a grey density image (how often each pixel was visited).

    Thinning a loop to a fixed number of points would alias with the cycle length (every
    k-th point lands on the same phase), and drawing 10^6 points of overlapping loops as a
    line costs tens of milliseconds a frame. A fixed grid of counts is exact, costs O(new
    points) per update and a constant to draw, and keeps counting cycles that have left
    the ring buffer. The grid is rebuilt (from the points still held) only when data fall
    outside it or the current axis changes to log.
    """

    BINS = 320

    def __init__(self, plot: pg.PlotWidget) -> None:
        self.image = pg.ImageItem()
        self.image.setZValue(-10)
        # scaling the image to the screen costs ~2 ms a paint; cache the scaled pixels
        self.image.setCacheMode(QGraphicsItem.DeviceCoordinateCache)
        lut = np.linspace([255, 255, 255, 0], [90, 90, 90, 255], 256).astype(np.ubyte)
        self.image.setLookupTable(lut)
        plot.addItem(self.image)
        self.counts = np.zeros((self.BINS, self.BINS), np.float64)
        self.rect: tuple[float, float, float, float] | None = None  # x0, y0, w, h
        self.upto = 0  # global index of the first point not counted yet
        self.log_y = False

    def clear(self) -> None:
        self.counts[:] = 0
        self.rect = None
        self.upto = 0
        self.image.clear()

    def _y(self, i: np.ndarray) -> np.ndarray:
        if not self.log_y:
            return i
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log10(np.abs(i))

    def update(self, v: np.ndarray, i: np.ndarray, offset: int, stop: int, log_y: bool) -> None:
        """Count the held points with global index < ``stop`` not counted yet.

        ``v``/``i`` are the ring's views; ``offset`` the global index of their first row.
        """
        if log_y != self.log_y:
            self.log_y = log_y
            self.rect = None
        if self.rect is None:
            self.counts[:] = 0
            self.upto = offset
        a = max(self.upto, offset) - offset
        b = max(stop - offset, a)
        if b <= a:
            return
        x, y = v[a:b], self._y(i[a:b])
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        if self.rect is None or (
            len(x)
            and (
                x.min() < self.rect[0]
                or x.max() > self.rect[0] + self.rect[2]
                or y.min() < self.rect[1]
                or y.max() > self.rect[1] + self.rect[3]
            )
        ):
            # (re)build the grid over everything held up to ``stop``
            x, y = v[: stop - offset], self._y(i[: stop - offset])
            ok = np.isfinite(x) & np.isfinite(y)
            x, y = x[ok], y[ok]
            if not len(x):
                return
            x0, x1, y0, y1 = x.min(), x.max(), y.min(), y.max()
            mx = 0.05 * (x1 - x0) or 1e-12
            my = 0.05 * (y1 - y0) or max(abs(y0) * 1e-3, 1e-15)
            self.rect = (x0 - mx, y0 - my, x1 - x0 + 2 * mx, y1 - y0 + 2 * my)
            self.counts[:] = 0
        x0, y0, w, h = self.rect
        n = self.BINS
        ix = np.clip(((x - x0) / w * n).astype(np.intp), 0, n - 1)
        iy = np.clip(((y - y0) / h * n).astype(np.intp), 0, n - 1)
        self.counts += np.bincount(ix * n + iy, minlength=n * n).reshape(n, n)
        self.upto = stop
        img = np.log1p(self.counts)
        top = img.max()
        self.image.setImage(img, levels=(0, top if top > 0 else 1), autoLevels=False)
        self.image.setRect(QRectF(x0, y0, w, h))


class LivePlots(QWidget):
    """The live view of one run: I-V by cycle, I(t), V(t), G(t) and one metric plot."""

    METRICS = ("loop area vs frequency", "ΔG vs pulse number")

    def __init__(self, model: LiveModel | None = None, parent=None) -> None:
        super().__init__(parent)
        self.model = model if model is not None else LiveModel()
        self._drawn: dict[str, int] = {}  # part -> model version it shows
        self._drawn_at: dict[str, float] = {}  # part -> when it was last drawn (monotonic s)
        self._info_at = 0.0
        self._last_part = "metric"
        self._old_countdown = 0
        self._metric_key: tuple = ()
        self._metric_pinned = False  # y range set by us for values that are all equal
        self._metric_countdown = 0
        self.frames = 0

        self.iv = PlotBox("I-V loops (newest cycles in colour)", "V", "V", "I", "A")
        self.it = PlotBox("I(t)", "t", "s", "I", "A")
        self.vt = PlotBox("V(t)", "t", "s", "V", "V")
        self.gt = PlotBox("G(t) = I/V of reads", "t", "s", "G", "S")
        self.metric = PlotBox("loop area vs frequency", "f", "Hz", "area", "V·A")
        self._time_boxes = (self.it, self.vt, self.gt)
        self.following = True
        self._x_range: tuple[float, float] | None = None
        self._setting_range = False
        for box in self._time_boxes:
            box.plot.getViewBox().enableAutoRange(x=False, y=True)
            box.plot.getViewBox().sigRangeChangedManually.connect(
                lambda _mask, src=box: self._zoomed(src)
            )

        self.iv_legend = self.iv.plot.addLegend(offset=(5, 5), labelTextSize="8pt")
        self.iv_density = Density(self.iv.plot)
        # stands for the density image in the legend (a legend takes curves only)
        self.iv_old = pg.PlotDataItem(pen=pg.mkPen((150, 150, 150), width=6))
        self.iv_recent = [
            self.iv.plot.plot(pen=pg.mkPen(colour(k), width=1.5)) for k in range(RECENT_CYCLES)
        ]
        self._drawn_slots: dict[int, tuple[int, int, int]] = {}
        self._legend_key: tuple = ()
        self._legend_countdown = 0
        self.i_curve = time_curve(self.it.plot, pg.mkPen(PALETTE[0], width=1))
        self.v_curve = time_curve(self.vt.plot, pg.mkPen(PALETTE[1], width=1))
        self.g_curve = time_curve(self.gt.plot, pg.mkPen(PALETTE[2], width=1))
        self.i_trace = Trace(self.i_curve)
        self.v_trace = Trace(self.v_curve)
        self.g_trace = Trace(self.g_curve)
        self.metric_curve = self.metric.plot.plot(
            pen=None, symbol="o", symbolSize=6, symbolBrush=PALETTE[0], symbolPen=None
        )
        self.metric_final = self.metric.plot.plot(
            pen=pg.mkPen(PALETTE[1], width=2), symbol="s", symbolSize=8, symbolBrush=PALETTE[1]
        )
        self._final_metrics: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.g_hint = self._hint(self.gt, "G(t) appears for protocols with reads")
        self.metric_hint = self._hint(self.metric, "")

        # controls
        self.autoscale_btn = QPushButton("Autoscale")
        self.autoscale_btn.setToolTip("Fit every plot to its data (and follow new data)")
        self.autoscale_btn.clicked.connect(self.autoscale)
        self.log_i = QCheckBox("log |I|")
        self.log_i.setToolTip("Logarithmic current axis (absolute value) on I-V and I(t)")
        self.log_i.toggled.connect(self._log_changed)
        self.log_g = QCheckBox("log G")
        self.log_g.toggled.connect(self._log_g_changed)
        self.metric_pick = QComboBox()
        self.metric_pick.addItems(self.METRICS)
        self.metric_pick.currentIndexChanged.connect(self._metric_changed)
        self.info = QLabel("")
        self.info.setStyleSheet("color: #555;")
        self.info.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        self.info.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)  # never widens
        bar = QHBoxLayout()
        bar.addWidget(self.autoscale_btn)
        bar.addWidget(self.log_i)
        bar.addWidget(self.log_g)
        bar.addWidget(QLabel("metric:"))
        bar.addWidget(self.metric_pick)
        bar.addWidget(self.info, 1)

        grid = QGridLayout()
        grid.setSpacing(4)
        grid.addWidget(self.iv, 0, 0, 2, 1)
        grid.addWidget(self.it, 0, 1)
        grid.addWidget(self.vt, 1, 1)
        grid.addWidget(self.gt, 2, 1)
        grid.addWidget(self.metric, 2, 0)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        grid.setRowStretch(0, 1)
        grid.setRowStretch(1, 1)
        grid.setRowStretch(2, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(bar)
        lay.addLayout(grid, 1)
        self._metric_changed(0)

    @staticmethod
    def _hint(box: PlotBox, text: str) -> pg.TextItem:
        """Grey text in an empty plot saying what will appear there (kept at its centre)."""
        item = pg.TextItem(text, color=(140, 140, 140), anchor=(0.5, 0.5))
        box.plot.addItem(item, ignoreBounds=True)
        vb = box.plot.getViewBox()

        def centre(*_args) -> None:
            (x0, x1), (y0, y1) = vb.viewRange()
            item.setPos((x0 + x1) / 2, (y0 + y1) / 2)

        vb.sigRangeChanged.connect(centre)
        centre()
        return item

    # --- controls ---

    def autoscale(self) -> None:
        """Fit every plot to its data; the time plots follow new data again."""
        for box in (self.iv, self.it, self.vt, self.gt, self.metric):
            box.plot.enableAutoRange()
        self._follow()
        self.refresh(force=True)

    def _follow(self) -> None:
        self.following = True
        self._x_range = None
        for box in self._time_boxes:  # x is set by refresh, y fits the data
            box.plot.getViewBox().enableAutoRange(x=False, y=True)

    def _zoomed(self, src: PlotBox) -> None:
        """A time plot was zoomed or panned by hand: stop following; the other two show
        the same times. (pyqtgraph's setXLink would do this, but it also makes every live
        frame update the linked plots twice.)"""
        if self._setting_range:
            return
        self.following = False
        x0, x1 = src.plot.getViewBox().viewRange()[0]
        for box in self._time_boxes:
            if box is not src:
                box.plot.getViewBox().setXRange(x0, x1, padding=0)

    def _follow_x(self) -> None:
        """While following: the three time plots share one time axis that grows in steps."""
        if any(b.plot.getViewBox().autoRangeEnabled()[0] for b in self._time_boxes):
            self._follow()  # pyqtgraph's own 'A' button was pressed on one of them
        if not self.following:
            return
        pts = self.model.points
        if not len(pts):
            return
        t = pts.view("t")
        rng = follow_range(float(t[0]), float(t[-1]))
        if rng != self._x_range:
            self._x_range = rng
            self._setting_range = True
            try:
                for box in self._time_boxes:
                    box.plot.getViewBox().setXRange(*rng, padding=0)
            finally:
                self._setting_range = False

    def _log_changed(self, on: bool) -> None:
        self.iv.plot.setLogMode(y=on)
        self.it.plot.setLogMode(y=on)
        self.i_trace.reset()  # its envelope is of I, now of |I|, or back
        self.refresh(force=True)

    def _log_g_changed(self, on: bool) -> None:
        self.gt.plot.setLogMode(y=on)
        self.g_trace.reset()
        self.refresh(force=True)

    def _metric_changed(self, index: int) -> None:
        pi = self.metric.plot.getPlotItem()
        if index == 0:
            pi.setTitle("loop area vs frequency (dots: each cycle; squares: analysis)", size="9pt")
            pi.setLabel("bottom", "f", units="Hz")
            pi.setLabel("left", "loop area", units="V·A")
            self.metric.cursor.x_unit, self.metric.cursor.y_unit = "Hz", "V·A"
            self.metric.plot.setLogMode(x=False, y=False)  # log once it spans a decade
            self.metric_hint.setText("loop areas appear as sweep cycles finish")
        else:
            pi.setTitle("ΔG = G(first read after pulse n) − G(first read)", size="9pt")
            pi.setLabel("bottom", "pulse number n")
            pi.setLabel("left", "ΔG", units="S")
            self.metric.cursor.x_unit, self.metric.cursor.y_unit = "", "S"
            self.metric.plot.setLogMode(x=False, y=False)
            self.metric_hint.setText("ΔG appears as reads after pulses arrive")
        self.refresh(force=True)

    def choose_metric_for(self, protocol_name: str) -> None:
        sweep = protocol_name in ("iv_hysteresis", "iv_fingerprint", "cyclic_voltammetry")
        self.metric_pick.setCurrentIndex(0 if sweep else 1)

    # --- data ---

    def clear(self) -> None:
        self.model.reset()
        self.iv_density.clear()
        for trace in (self.i_trace, self.v_trace, self.g_trace):
            trace.reset()
        self._follow()
        self._final_metrics = {}
        self._drawn_slots = {}
        self._legend_key = ()
        self.refresh(force=True)

    def set_final_metrics(self, metrics) -> None:
        """Analysis results of the finished run (a DataFrame or list of metric dicts)."""
        rows = metrics.to_dict("records") if hasattr(metrics, "to_dict") else list(metrics or [])
        freq: dict[int, dict[str, float]] = {}
        pulses: dict[int, float] = {}
        g0 = None
        for m in rows:
            scope, name = m.get("scope"), m.get("name")
            idx = m.get("index")
            if scope == "frequency" and name in ("frequency", "loop_area") and idx is not None:
                freq.setdefault(int(idx), {})[name] = float(m["value"])
            elif scope == "pulse" and name == "g_read" and idx is not None:
                pulses[int(idx)] = float(m["value"])
            elif scope == "run" and name == "g_baseline":
                g0 = float(m["value"])
        out = {}
        pairs = [(r["frequency"], r["loop_area"]) for r in freq.values() if len(r) == 2]
        if pairs:
            pairs.sort()
            out["loop"] = (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
        if pulses:
            keys = sorted(pulses)
            base = g0 if g0 is not None and math.isfinite(g0) else pulses[keys[0]]
            out["dg"] = (np.array(keys, float), np.array([pulses[k] - base for k in keys]))
        self._final_metrics = out
        self.refresh(force=True)

    PARTS = ("i", "v", "g", "iv", "metric")

    def refresh(self, force: bool = False) -> bool:
        """Redraw what changed in the model (if the plots are visible); True if drawn.

        The window calls this every few milliseconds and each call redraws one plot: the
        next one in turn whose data changed and that was not drawn in the last
        1/MAX_PLOT_FPS s. No single call (and the paint after it) holds the event loop for
        more than one plot's work, and the five plots share the time the loop has evenly.
        """
        if not force and not self.isVisible():
            return False
        version = self.model.version
        now = time.monotonic()
        if force:
            parts = self.PARTS
        else:
            k = self.PARTS.index(self._last_part)
            order = self.PARTS[k + 1 :] + self.PARTS[: k + 1]
            soonest = now - 1.0 / MAX_PLOT_FPS
            stale = [
                p
                for p in order
                if self._drawn.get(p) != version and self._drawn_at.get(p, -math.inf) <= soonest
            ]
            if not stale:
                return False
            parts = stale[:1]
        m = self.model
        pts = m.points
        log_i = self.log_i.isChecked()
        for part in parts:
            self._drawn[part] = version
            self._drawn_at[part] = now
            self._last_part = part
            if part in ("i", "v", "g"):
                self._follow_x()
            f = self.following
            if part == "i":
                self.i_trace.update(pts, "t", "i", np.abs if log_i else None, force, f)
                box = self.it
                self.frames += 1
            elif part == "v":
                self.v_trace.update(pts, "t", "v", None, force, f)
                box = self.vt
            elif part == "g":
                gg = m.g.view("g")
                log_g = self.log_g.isChecked()
                self.g_trace.update(m.g, "t", "g", np.abs if log_g else None, force, f)
                self.g_curve.setSymbol("o" if len(gg) <= 300 else None)
                self.g_curve.setSymbolSize(4)
                self.g_hint.setVisible(len(gg) == 0)
                box = self.gt
            elif part == "iv":
                self._draw_iv(pts.view("v"), pts.view("i"), log_i, force)
                box = self.iv
            else:
                self._draw_metric(force)
                box = self.metric
            # settle the autorange now, not in the paint: a range changed during a paint
            # asks for a second paint of the same frame
            box.plot.getViewBox().prepareForPaint()
        if force or now - self._info_at > INFO_EVERY_S:
            self._info_at = now
            n = len(pts)
            shown = f"{n:,} points shown"
            if m.total > n:
                shown += f" (newest of {m.total:,}; all are in the database)"
            self.info.setText(shown)
        return True

    def _draw_iv(self, v: np.ndarray, i: np.ndarray, log_i: bool, force: bool) -> None:
        m = self.model
        runs = list(m.cycle_runs)[-RECENT_CYCLES:]
        off = m.points.offset
        first_recent = runs[0][0] if runs else m.points.total
        # the grey history changes slowly: update it a few times a second, not every frame
        self._old_countdown -= 1
        if force or self._old_countdown <= 0:
            self._old_countdown = OLD_EVERY_FRAMES
            self.iv_density.update(v, i, off, first_recent, log_i)
        # cycle c is drawn by curve c % RECENT_CYCLES in that curve's colour: when a new
        # cycle starts only one curve changes, the others keep their data and colour
        wanted: dict[int, tuple[int, int, int]] = {}
        for k, (start, cycle) in enumerate(runs):
            stop = runs[k + 1][0] if k + 1 < len(runs) else m.points.total
            wanted[cycle % RECENT_CYCLES] = (cycle, start, stop)
        for slot, curve in enumerate(self.iv_recent):
            want = wanted.get(slot)
            if want == self._drawn_slots.get(slot) and not force:
                continue
            if want is None:
                curve.setData([], [])
                self._drawn_slots.pop(slot, None)
                continue
            _cycle, start, stop = want
            s, e = max(start - off, 0), max(stop - off, 0)
            i_part = stride_view(i[s:e], RECENT_BUDGET)
            curve.setData(stride_view(v[s:e], RECENT_BUDGET), np.abs(i_part) if log_i else i_part)
            self._drawn_slots[slot] = want
        cycles = {slot: c for slot, (c, _s, _e) in wanted.items()}
        key = (tuple(sorted(cycles.items())), first_recent > off)
        # relabelling a legend costs milliseconds: at most ~8 times a second
        self._legend_countdown -= 1
        if key != self._legend_key and (force or self._legend_countdown <= 0):
            self._legend_countdown = LEGEND_EVERY_FRAMES
            self._legend_key = key
            self._update_legend(cycles, has_old=first_recent > off)

    def _update_legend(self, cycles: dict[int, int], has_old: bool) -> None:
        """Legend rows in cycle order, one per coloured curve (called a few times a second
        at most).

        The rows are made once and then re-pointed: when a new cycle starts, row k shows
        the k-th oldest curve (its sample drawn from that curve's pen) with a new label.
        Clearing and re-adding the rows instead cost ~7 ms a time (new label items).
        """
        slots = sorted(cycles, key=cycles.get)  # oldest cycle first
        wanted = ([self.iv_old] if has_old else []) + [self.iv_recent[k] for k in slots]
        texts = (["earlier cycles (density)"] if has_old else []) + [
            f"cycle {cycles[k]}" for k in slots
        ]
        legend = self.iv_legend
        if len(legend.items) > len(wanted):  # fewer rows (a new run): start over
            legend.clear()
        while len(legend.items) < len(wanted):
            legend.addItem(wanted[len(legend.items)], "")
        for (sample, label), item, text in zip(legend.items, wanted, texts, strict=True):
            if sample.item is not item:
                sample.item = item
                sample.update()
            if label.text != text:
                label.setText(text)

    def _draw_metric(self, force: bool) -> None:
        pick = self.metric_pick.currentIndex()
        key = (pick, len(self.model.loop_areas), len(self.model.delta_g), id(self._final_metrics))
        self._metric_countdown -= 1
        if not force and (key == self._metric_key or self._metric_countdown > 0):
            return  # a metric needs no 30 frames/s: at most every OLD_EVERY_FRAMES frames
        self._metric_countdown = OLD_EVERY_FRAMES
        self._metric_key = key
        if pick == 0:
            x, y = self.model.loop_area_arrays()
            final = self._final_metrics.get("loop")
        else:
            x, y = self.model.delta_g_arrays()
            final = self._final_metrics.get("dg")
            if final is not None:
                x, y = np.empty(0), np.empty(0)
        if self.metric_pick.currentIndex() == 0 and len(x):
            ok = x > 0
            x, y = x[ok], y[ok]
            if len(x):
                # a log frequency axis once the frequencies span a decade (below that
                # pyqtgraph's log axis has no labelled tick at all)
                lo, hi = float(x.min()), float(x.max())
                if final is not None and len(final[0]):
                    lo, hi = min(lo, final[0].min()), max(hi, final[0].max())
                wide = hi >= 10 * lo
                if wide != self.metric.plot.getPlotItem().ctrl.logXCheck.isChecked():
                    self.metric.plot.setLogMode(x=wide, y=False)
        if len(x) > METRIC_SYMBOLS_MAX:
            x, y = stride_view(x, METRIC_SYMBOLS_MAX), stride_view(y, METRIC_SYMBOLS_MAX)
        self.metric_curve.setData(x, y)
        self._pin_flat_metric(y if final is None else np.concatenate([y, final[1]]))
        self.metric_hint.setVisible(len(x) == 0 and final is None)
        if final is not None:
            self.metric_final.setData(*final)
        else:
            self.metric_final.setData([], [])

    def _pin_flat_metric(self, y: np.ndarray) -> None:
        """All values equal (one frequency, identical loops): pyqtgraph would widen the
        axis to +-0.5 in absolute units (+-0.5 V*A around a 1e-8 V*A loop area) and show
        the point on zero; give it +-10 % of the value instead, and hand the axis back to
        autoscale once the values differ."""
        vb = self.metric.plot.getViewBox()
        y = y[np.isfinite(y)]
        if len(y) and y.min() == y.max():
            v = float(y[0])
            d = abs(v) * 0.1 or 1.0
            vb.setYRange(v - d, v + d, padding=0)
            self._metric_pinned = True
        elif self._metric_pinned:
            self._metric_pinned = False
            vb.enableAutoRange(y=True)


class OverlayPlots(QWidget):
    """Several stored runs on the same axes: I-V and I(t), one colour per run, and per
    channel of a run on two channels (a device each)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.iv = PlotBox("I-V", "V", "V", "I", "A")
        self.it = PlotBox("I(t)", "t", "s", "I", "A")
        self.iv_legend = self.iv.plot.addLegend(offset=(5, 5), labelTextSize="8pt")
        self.it.plot.addLegend(offset=(5, 5), labelTextSize="8pt")
        self.runs: dict[int, tuple] = {}
        self.log_i = QCheckBox("log |I|")
        self.log_i.toggled.connect(self._log_changed)
        self.autoscale_btn = QPushButton("Autoscale")
        self.autoscale_btn.clicked.connect(self.autoscale)
        bar = QHBoxLayout()
        bar.addWidget(self.autoscale_btn)
        bar.addWidget(self.log_i)
        bar.addStretch(1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(bar)
        row = QHBoxLayout()
        row.addWidget(self.iv, 1)
        row.addWidget(self.it, 1)
        lay.addLayout(row, 1)

    def autoscale(self) -> None:
        self.iv.plot.enableAutoRange()
        self.it.plot.enableAutoRange()

    def _log_changed(self, on: bool) -> None:
        self.iv.plot.setLogMode(y=on)
        self.it.plot.setLogMode(y=on)
        for run_id, (label, cols, _iv, _it, channels) in list(self.runs.items()):
            self._remove_items(run_id)
            self.add_run(run_id, label, cols, channels)

    def clear(self) -> None:
        for run_id in list(self.runs):
            self._remove_items(run_id)
        self.runs.clear()

    def _remove_items(self, run_id: int) -> None:
        _label, _cols, iv_items, it_items, _channels = self.runs[run_id]
        for item in iv_items:
            self.iv.plot.removeItem(item)
        for item in it_items:
            self.it.plot.removeItem(item)

    def curve_names(self) -> list[str]:
        """The names of the curves drawn, in order: one per run, or per run and channel."""
        return [item.name() for *_x, iv_items, _it, _c in self.runs.values() for item in iv_items]

    def add_run(
        self,
        run_id: int,
        label: str,
        cols: dict[str, np.ndarray],
        channels: dict[int, str] | None = None,
    ) -> None:
        """Draw a run; a run on several channels (a device each) as one curve per channel,
        named ``channels[c]`` (e.g. "run 12 smub: chipB")."""
        if run_id in self.runs:
            self._remove_items(run_id)
        else:
            self.runs[run_id] = (label, cols, [], [], channels)
        k = 0  # one colour per curve, in the order the runs were added
        for other, (*_x, iv_items, _it, _c) in self.runs.items():
            if other == run_id:
                break
            k += len(iv_items)
        v = cols["v"]
        if "v_set" in cols:
            v = np.where(np.isfinite(v), v, cols["v_set"])
        i = np.abs(cols["i"]) if self.log_i.isChecked() else cols["i"]
        parts: list[tuple[str, np.ndarray | None]] = [(label, None)]
        on = cols.get("channel")
        if on is not None and len(on) and (on != on[0]).any():
            names = channels or {}
            parts = [
                (names.get(int(c), f"{label} channel {int(c)}"), on == c) for c in np.unique(on)
            ]
        iv_items, it_items = [], []
        for name, keep in parts:
            pen = pg.mkPen(colour(k + len(iv_items)), width=1.2)
            vc, ic, tc = (v, i, cols["t"]) if keep is None else (v[keep], i[keep], cols["t"][keep])
            iv_items.append(
                self.iv.plot.plot(
                    stride_view(vc, OVERLAY_BUDGET),
                    stride_view(ic, OVERLAY_BUDGET),
                    pen=pen,
                    name=name,
                )
            )
            it_item = time_curve(self.it.plot, pen, name=name)
            it_item.setData(tc, ic)
            it_items.append(it_item)
        self.runs[run_id] = (label, cols, iv_items, it_items, channels)
