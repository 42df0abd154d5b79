"""A lane-by-lane emulation of `attn_mma` in attention.cu, in plain Python.

No GPU was at hand when the kernel was written, so this checks its index
arithmetic: every lane's registers, the m16n8k16 fragment layouts as the PTX
ISA documents them (`mma` below is the hardware), the shuffles within 4-lane
groups, the online softmax and the segment mask, against a direct softmax
attention. It mirrors the kernel statement by statement: change both
together. Run: `python3 kernels/emulate_attention_mma.py` (seconds; prints
the max error per case, which should be at float64 rounding).
"""
import math, random

BQ, BK = 64, 64

def mma(d, a, b0, b1):
    """d[lane] (4 floats) += A B per the PTX m16n8k16 layouts; a[lane] = 4 pairs, b0/b1[lane] pairs."""
    A = [[0.0] * 16 for _ in range(16)]
    B = [[0.0] * 8 for _ in range(16)]
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        # a0,a1: (g, 2t+{0,1}); a2,a3: (g+8, 2t..); a4,a5: (g, 2t+8..); a6,a7: (g+8, 2t+8..)
        for reg, (row, col) in enumerate([(g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)]):
            A[row][col], A[row][col + 1] = a[lane][reg]
        # b0,b1: (k=2t+{0,1}, n=g); b2,b3: (k=2t+8+{0,1}, n=g)
        B[2 * t][g], B[2 * t + 1][g] = b0[lane]
        B[2 * t + 8][g], B[2 * t + 9][g] = b1[lane]
    D = [[sum(A[i][k] * B[k][j] for k in range(16)) for j in range(8)] for i in range(16)]
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        d[lane][0] += D[g][2 * t]
        d[lane][1] += D[g][2 * t + 1]
        d[lane][2] += D[g + 8][2 * t]
        d[lane][3] += D[g + 8][2 * t + 1]

def shfl_xor(vals, mask):
    return [vals[l ^ mask] for l in range(32)]

def attn_mma(q, k, v, qseg, kseg, n, m, dh, scale):
    """One (b, h); q: n x dh, k, v: m x dh lists. Returns n x dh."""
    DP = (dh + 15) // 16 * 16
    STRIDE = DP + 8
    out = [[None] * dh for _ in range(n)]
    def load_pair(mat, rows, row, col):
        if row < rows and col < dh:
            return (mat[row][col], mat[row][col + 1])
        return (0.0, 0.0)
    for bx in range((n + BQ - 1) // BQ):
        ks = [0.0] * (BK * STRIDE)
        vs = [0.0] * (BK * STRIDE)
        ksg = [0] * BK
        warps = []
        for warp in range(4):
            W = {}
            W['r0'] = [bx * BQ + warp * 16 + (l >> 2) for l in range(32)]
            W['r1'] = [r + 8 for r in W['r0']]
            W['seg0'] = [(qseg[r] if qseg else 1) if r < n else 0 for r in W['r0']]
            W['seg1'] = [(qseg[r] if qseg else 1) if r < n else 0 for r in W['r1']]
            W['qf'] = [[None] * 4 for _ in range(DP // 16)]
            for kc in range(DP // 16):
                W['qf'][kc] = [[load_pair(q, n, W['r0'][l], kc * 16 + 2 * (l & 3)),
                                load_pair(q, n, W['r1'][l], kc * 16 + 2 * (l & 3)),
                                load_pair(q, n, W['r0'][l], kc * 16 + 2 * (l & 3) + 8),
                                load_pair(q, n, W['r1'][l], kc * 16 + 2 * (l & 3) + 8)] for l in range(32)]
            W['o'] = [[[0.0] * 4 for _ in range(32)] for _ in range(DP // 8)]
            W['mx0'] = [-math.inf] * 32; W['mx1'] = [-math.inf] * 32
            W['l0'] = [0.0] * 32; W['l1'] = [0.0] * 32
            warps.append(W)
        for j0 in range(0, m, BK):
            for e in range(BK * (DP // 2)):
                r, col = e // (DP // 2), 2 * (e % (DP // 2))
                ks[r * STRIDE + col], ks[r * STRIDE + col + 1] = load_pair(k, m, j0 + r, col)
                vs[r * STRIDE + col], vs[r * STRIDE + col + 1] = load_pair(v, m, j0 + r, col)
            for tid in range(BK):
                j = j0 + tid
                ksg[tid] = (kseg[j] if kseg else 1) if j < m else 0
            for W in warps:
                s = [[[0.0] * 4 for _ in range(32)] for _ in range(BK // 8)]
                for nc in range(BK // 8):
                    for kc in range(DP // 16):
                        a = [W['qf'][kc][l] for l in range(32)]
                        b0 = []; b1 = []
                        for l in range(32):
                            g, t = l >> 2, l & 3
                            base = (nc * 8 + g) * STRIDE + 2 * t + kc * 16
                            b0.append((ks[base], ks[base + 1]))
                            b1.append((ks[base + 8], ks[base + 9]))
                        mma(s[nc], a, b0, b1)
                sl2 = scale * 1.4426950408889634
                tmax0 = [-math.inf] * 32; tmax1 = [-math.inf] * 32
                for l in range(32):
                    t = l & 3
                    for nc in range(BK // 8):
                        for e in range(2):
                            ksv = ksg[nc * 8 + 2 * t + e]
                            s[nc][l][e] = s[nc][l][e] * sl2 if (ksv != 0 and ksv == W['seg0'][l]) else -math.inf
                            s[nc][l][2 + e] = s[nc][l][2 + e] * sl2 if (ksv != 0 and ksv == W['seg1'][l]) else -math.inf
                            tmax0[l] = max(tmax0[l], s[nc][l][e]); tmax1[l] = max(tmax1[l], s[nc][l][2 + e])
                for mask in (1, 2):
                    o0 = shfl_xor(tmax0, mask); o1 = shfl_xor(tmax1, mask)
                    tmax0 = [max(a, b) for a, b in zip(tmax0, o0)]
                    tmax1 = [max(a, b) for a, b in zip(tmax1, o1)]
                sum0 = [0.0] * 32; sum1 = [0.0] * 32
                alpha0 = [0.0] * 32; alpha1 = [0.0] * 32
                for l in range(32):
                    new0 = max(W['mx0'][l], tmax0[l]); new1 = max(W['mx1'][l], tmax1[l])
                    base0 = 0.0 if new0 == -math.inf else new0
                    base1 = 0.0 if new1 == -math.inf else new1
                    alpha0[l] = 2 ** (W['mx0'][l] - base0) if W['mx0'][l] != -math.inf else 0.0
                    alpha1[l] = 2 ** (W['mx1'][l] - base1) if W['mx1'][l] != -math.inf else 0.0
                    for nc in range(BK // 8):
                        for e in range(2):
                            s[nc][l][e] = 2 ** (s[nc][l][e] - base0) if s[nc][l][e] != -math.inf else 0.0
                            s[nc][l][2 + e] = 2 ** (s[nc][l][2 + e] - base1) if s[nc][l][2 + e] != -math.inf else 0.0
                        sum0[l] += s[nc][l][0] + s[nc][l][1]; sum1[l] += s[nc][l][2] + s[nc][l][3]
                    W['mx0'][l] = new0; W['mx1'][l] = new1
                for mask in (1, 2):
                    o0 = shfl_xor(sum0, mask); o1 = shfl_xor(sum1, mask)
                    sum0 = [a + b for a, b in zip(sum0, o0)]; sum1 = [a + b for a, b in zip(sum1, o1)]
                for l in range(32):
                    W['l0'][l] = W['l0'][l] * alpha0[l] + sum0[l]
                    W['l1'][l] = W['l1'][l] * alpha1[l] + sum1[l]
                    for dc in range(DP // 8):
                        o = W['o'][dc][l]
                        o[0] *= alpha0[l]; o[1] *= alpha0[l]; o[2] *= alpha1[l]; o[3] *= alpha1[l]
                for kc in range(BK // 16):
                    a = [[(s[2 * kc][l][0], s[2 * kc][l][1]), (s[2 * kc][l][2], s[2 * kc][l][3]),
                          (s[2 * kc + 1][l][0], s[2 * kc + 1][l][1]), (s[2 * kc + 1][l][2], s[2 * kc + 1][l][3])]
                         for l in range(32)]
                    for dc in range(DP // 8):
                        b0 = []; b1 = []
                        for l in range(32):
                            g, t = l >> 2, l & 3
                            vc = (kc * 16 + 2 * t) * STRIDE + g + dc * 8
                            b0.append((vs[vc], vs[vc + STRIDE]))
                            b1.append((vs[vc + 8 * STRIDE], vs[vc + 9 * STRIDE]))
                        mma(W['o'][dc], a, b0, b1)
        for W in warps:
            for l in range(32):
                t = l & 3
                inv0 = 1 / W['l0'][l] if W['l0'][l] > 0 else 0.0
                inv1 = 1 / W['l1'][l] if W['l1'][l] > 0 else 0.0
                for dc in range(DP // 8):
                    col = dc * 8 + 2 * t
                    if col < dh:
                        o = W['o'][dc][l]
                        if W['r0'][l] < n:
                            out[W['r0'][l]][col] = o[0] * inv0; out[W['r0'][l]][col + 1] = o[1] * inv0
                        if W['r1'][l] < n:
                            out[W['r1'][l]][col] = o[2] * inv1; out[W['r1'][l]][col + 1] = o[3] * inv1
    return out

def reference(q, k, v, qseg, kseg, n, m, dh, scale):
    out = []
    for i in range(n):
        sc = []
        for j in range(m):
            ok = (kseg[j] if kseg else 1) != 0 and (kseg[j] if kseg else 1) == (qseg[i] if qseg else 1)
            sc.append(sum(q[i][d] * k[j][d] for d in range(dh)) * scale if ok else -math.inf)
        mx = max(sc)
        if mx == -math.inf:
            out.append([0.0] * dh); continue
        p = [math.exp(s - mx) for s in sc]
        z = sum(p)
        out.append([sum(p[j] * v[j][d] for j in range(m)) / z for d in range(dh)])
    return out

random.seed(1)
for (n, m, dh, segs) in [(70, 100, 72, False), (20, 70, 16, True), (5, 3, 2, False)]:
    q = [[random.gauss(0, 1.5) for _ in range(dh)] for _ in range(n)]
    k = [[random.gauss(0, 1.5) for _ in range(dh)] for _ in range(m)]
    v = [[random.gauss(0, 1) for _ in range(dh)] for _ in range(m)]
    qseg = kseg = None
    if segs:
        qseg = [1 if i < 8 else (2 if i == 8 else (3 if i < 17 else 0)) for i in range(n)]
        kseg = [1 if j < 30 else (2 if j == 30 else (3 if j < 60 else 0)) for j in range(m)]
    scale = 1 / math.sqrt(dh)
    got = attn_mma(q, k, v, qseg, kseg, n, m, dh, scale)
    want = reference(q, k, v, qseg, kseg, n, m, dh, scale)
    err = max(abs(got[i][d] - want[i][d]) for i in range(n) for d in range(dh))
    mag = max(abs(want[i][d]) for i in range(n) for d in range(dh))
    print(f"n={n} m={m} dh={dh} segments={segs}: max err {err:.2e} (max |out| {mag:.2f})")
