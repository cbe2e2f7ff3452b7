// Fused whole-sequence loops of seqbench's custom recurrent cells (HiPPO LegS/LegT, ENRNN/scoRNN, RHN),
// forward and backward, float32 and float64, CPU. Built on first use by seqbench/fused.py
// (torch.utils.cpp_extension) and cached; the eager cells in models/ are the reference and the tests' oracle.
//
// Every kernel runs only the recurrent part of its cell: the inputs' projections for all steps are one
// matrix product before the loop (HiPPO: a narrow input's part is added inside it), and the weights'
// gradients one product after the backward loop (seqbench/fused.py). Inside the loop the per-step arithmetic is plain C++ loops (no per-op dispatch,
// ~3 us an ATen call, which is what made the Python loops slow); a matrix product large enough to pay for
// a BLAS call (kBlasMacs multiply-adds) goes to at::addmm instead.
#include <torch/extension.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include <unistd.h>

namespace {

using at::Tensor;

// Products of at least this many multiply-adds go to BLAS (at::addmm_): below it a call's overhead
// (~3 us) exceeds what the plain loop takes (~4 multiply-adds a ns on one AVX2 core).
constexpr int64_t kBlasMacs = 1 << 16;

template <typename T>
inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

template <typename T>
Tensor wrap(T* p, at::IntArrayRef sizes, at::IntArrayRef strides) {
  return at::from_blob(p, sizes, strides, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// The large tensors of the loops (outputs, what the backward keeps, the input gradients) come from a pool of
// the blocks the previous calls freed, matched by size: a training step at fixed shapes then reuses its
// memory instead of mapping fresh pages (a quarter of a HiPPO forward at batch 100, N 128). The pool keeps
// at most 2 GiB (and an eighth of the machine's memory) of free blocks; a block it cannot keep goes back.
constexpr size_t kPoolBytesMax = size_t(2) << 30;  // and at most an eighth of the machine's memory
constexpr size_t kPoolMin = size_t(1) << 20;  // smaller tensors: torch's allocator

struct Pool {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;
  size_t held = 0;
  const size_t cap = std::min(kPoolBytesMax, size_t(sysconf(_SC_PHYS_PAGES)) * size_t(sysconf(_SC_PAGESIZE)) / 8);

  void* get(size_t n) {
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = free_blocks.find(n);
      if (it != free_blocks.end()) {
        void* p = it->second;
        free_blocks.erase(it);
        held -= n;
        return p;
      }
    }
    void* p = std::aligned_alloc(64, (n + 63) / 64 * 64);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }

  void put(void* p, size_t n) {
    std::lock_guard<std::mutex> lock(mu);
    if (held + n > cap) {
      std::free(p);
      return;
    }
    free_blocks.emplace(n, p);
    held += n;
  }
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: tensors may outlive static destruction order
  return *p;
}

Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const size_t n = size_t(numel) * options.dtype().itemsize();
  if (n < kPoolMin) return at::empty(sizes, options);
  void* p = pool().get(n);
  return at::from_blob(p, sizes, [n](void* q) { pool().put(q, n); }, options);
}

// A [B, T, F] tensor's rows at step k: row b at p + b * sb + k * st (the last dim contiguous).
template <typename T>
struct Steps {
  T* p;
  int64_t sb, st;
  Steps(const Tensor& x) : p(x.data_ptr<T>()), sb(x.stride(0)), st(x.stride(1)) {}
  T* at(int64_t k) const { return p + k * st; }
};

// Rows of [B, 2H] pre-activations (contiguous) in place: tanh on the first H of each row, sigmoid on the
// rest. Many elements: one vectorised ATen sigmoid over the block, tanh(x) = 2 sigmoid(2x) - 1 (MKL's tanh
// takes 5x a sigmoid here); few: scalar libm (a call costs more than they take).
constexpr int64_t kVectorElems = 512;

template <typename T>
void tanh_sigmoid_(T* pre, int64_t B, int64_t H) {
  if (B * H >= kVectorElems) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < H; ++j) pre[b * 2 * H + j] *= T(2);
    wrap(pre, {B * 2 * H}, {1}).sigmoid_();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < H; ++j) pre[b * 2 * H + j] = T(2) * pre[b * 2 * H + j] - T(1);
    return;
  }
  for (int64_t b = 0; b < B; ++b) {
    T* p = pre + b * 2 * H;
    for (int64_t j = 0; j < H; ++j) {
      p[j] = std::tanh(p[j]);
      p[H + j] = sigmoid(p[H + j]);
    }
  }
}

// The gated update both HiPPO and RHN make of their state, over B rows: o = p + g (h~ - p) (= (1 - g) p + g h~),
// gates [B, 2H] = (h~, g) contiguous, p's rows ldp apart, o's ldo apart (o may be p).
template <typename T>
void gated_update(const T* gates, const T* p, int64_t ldp, int64_t B, int64_t H, T* o, int64_t ldo) {
  for (int64_t b = 0; b < B; ++b) {
    const T* gb = gates + b * 2 * H;
    const T* pb = p + b * ldp;
    T* ob = o + b * ldo;
    _Pragma("omp simd")
    for (int64_t j = 0; j < H; ++j) ob[j] = pb[j] + gb[H + j] * (gb[j] - pb[j]);
  }
}

// Its backward, h~ = tanh and g = sigmoid of the pre-activations: d [B, H] holds o's gradient (plus dy's rows,
// ldy apart, where dy is given) and leaves with p's gradient through the carry, d (1 - g); the pre-activations'
// gradients, d g (1 - h~^2) and d (h~ - p) g (1 - g), go to dpre's rows (ldd apart).
template <typename T>
void gated_update_backward(const T* gates, const T* p, int64_t ldp, int64_t B, int64_t H, T* d, const T* dy,
                           int64_t ldy, T* dpre, int64_t ldd) {
  for (int64_t b = 0; b < B; ++b) {
    const T* gb = gates + b * 2 * H;
    const T* pb = p + b * ldp;
    const T* dyb = dy != nullptr ? dy + b * ldy : nullptr;
    T* db = d + b * H;
    T* out = dpre + b * ldd;
    _Pragma("omp simd")
    for (int64_t j = 0; j < H; ++j) {
      const T th = gb[j], sg = gb[H + j];
      const T dj = dyb != nullptr ? db[j] + dyb[j] : db[j];
      out[j] = dj * sg * (T(1) - th * th);
      out[H + j] = dj * (th - pb[j]) * sg * (T(1) - sg);
      db[j] = dj * (T(1) - sg);
    }
  }
}

// y[B, N] += x[B, K] . M[K, N]: x's rows ldx apart, y's ldy apart, M row-major contiguous. A product with a
// short inner dimension (K < 16: a narrow input) stays in the loop, whose inner loop runs along N.
template <typename T>
void mm_acc(const T* x, int64_t ldx, int64_t B, int64_t K, const T* M, int64_t N, T* y, int64_t ldy) {
  if (K >= 16 && B * K * N >= kBlasMacs) {
    Tensor Y = wrap(y, {B, N}, {ldy, 1});
    Y.addmm_(wrap(const_cast<T*>(x), {B, K}, {ldx, 1}), wrap(const_cast<T*>(M), {K, N}, {N, 1}));
    return;
  }
  for (int64_t b = 0; b < B; ++b) {
    const T* xb = x + b * ldx;
    T* yb = y + b * ldy;
    if (N == 1) {
      T acc = 0;
_Pragma("omp simd reduction(+ : acc)")
      for (int64_t i = 0; i < K; ++i) acc += xb[i] * M[i];
      yb[0] += acc;
      continue;
    }
    for (int64_t i = 0; i < K; ++i) {
      const T xi = xb[i];
      const T* m = M + i * N;
      for (int64_t j = 0; j < N; ++j) yb[j] += xi * m[j];
    }
  }
}

// ------------------------------------------------------------------------------------ HiPPO memory
// The memory step c <- A_t c + B_t u on B x M channels of order N, and its adjoint. A state's channel
// (b, m) lies at base + b * ld + m * N; u and du are [B, M] contiguous.
//   dense (mode 0): A_t, B_t from the cached tables (chunks of C consecutive steps; A_t lower triangular);
//   fast (mode 1): the O(N) LegS GBT step (models/hippo.py legs_step_fast, as its sequential "loop" solver),
//     vectorised across channels: the channels are transposed to [N, channels] for the loop over n;
//   invariant (mode 2): one dense pair for every step (LegT; A full).
template <typename T>
struct Memory {
  int mode;
  int64_t N, C, first;
  bool lower;
  double alpha;
  std::vector<const T*> As, Bs;  // per chunk: [C, N, N], [C, N]
  std::vector<T> s, p1, iD, r;   // fast step: this step's vectors (computed in float64, cast)
  std::vector<T> xt, acc1, acc2;  // fast step: [N, channels] and two running sums per channel
  T d = 0, k = 0;

  const T* A(int64_t t) const { return mode == 2 ? As[0] : As[t / C - first] + (t % C) * N * N; }
  const T* Bv(int64_t t) const { return mode == 2 ? Bs[0] : Bs[t / C - first] + (t % C) * N; }

  void coefficients(int64_t t) {  // models/hippo.py legs_fast_coefficients, for one t >= 1
    const double dd = 1.0 / double(t), kk = (1.0 - alpha) * dd;
    d = T(dd);
    k = T(kk);
    for (int64_t n = 0; n < N; ++n) {
      const double sn = std::sqrt(2.0 * n + 1.0);
      s[n] = T(sn);
      p1[n] = T(1.0 - kk * (n + 1));
      iD[n] = T(1.0 / (1.0 + alpha * dd * (n + 1)));
      r[n] = T(alpha * dd * sn);
    }
  }

  void gather(const T* c, int64_t ld, int64_t B, int64_t M) {  // xt[n, q] = c[q][n]
    const int64_t R = B * M;
    xt.resize(N * R);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t m = 0; m < M; ++m) {
        const T* cq = c + b * ld + m * N;
        const int64_t q = b * M + m;
        for (int64_t n = 0; n < N; ++n) xt[n * R + q] = cq[n];
      }
  }

  void scatter(T* out, int64_t ld, int64_t B, int64_t M) {
    const int64_t R = B * M;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t m = 0; m < M; ++m) {
        T* o = out + b * ld + m * N;
        const int64_t q = b * M + m;
        for (int64_t n = 0; n < N; ++n) o[n] = xt[n * R + q];
      }
  }

  void forward(const T* c, int64_t ldc, const T* u, int64_t B, int64_t M, int64_t t, T* out, int64_t ldo) {
    const int64_t R = B * M;
    if (mode == 1) {
      if (t == 0) {
        for (int64_t b = 0; b < B; ++b)
          for (int64_t m = 0; m < M; ++m) {
            T* o = out + b * ldo + m * N;
            o[0] = u[b * M + m];
            for (int64_t n = 1; n < N; ++n) o[n] = T(0);
          }
        return;
      }
      coefficients(t);
      gather(c, ldc, B, M);
      acc1.assign(R, T(0));  // excl_cumsum(s c)
      acc2.assign(R, T(0));  // S, the forward substitution's running sum
      T* excl = acc1.data();
      T* S = acc2.data();
      for (int64_t n = 0; n < N; ++n) {
        T* x = xt.data() + n * R;
        const T pn = p1[n], sn = s[n], rn = r[n], dn = iD[n];
        if (alpha != 0.0) {
_Pragma("omp simd")
          for (int64_t q = 0; q < R; ++q) {
            const T cn = x[q];
            const T y = pn * cn + sn * (d * u[q] - k * excl[q]);  // y = p1 c + s (d u - k excl_cumsum(s c))
            excl[q] += sn * cn;
            const T xn = (y - rn * S[q]) * dn;  // (I + a A / t) x = y: x_n = (y_n - a d s_n S_{n-1}) / D_n
            S[q] += sn * xn;
            x[q] = xn;
          }
        } else {
_Pragma("omp simd")
          for (int64_t q = 0; q < R; ++q) {
            const T cn = x[q];
            x[q] = pn * cn + sn * (d * u[q] - k * excl[q]);
            excl[q] += sn * cn;
          }
        }
      }
      scatter(out, ldo, B, M);
      return;
    }
    const T* At = A(t);
    const T* Bt = Bv(t);
    if (R * N * N >= kBlasMacs) {
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t b = 0; b < B; ++b)
          for (int64_t n = 0; n < N; ++n) out[b * ldo + m * N + n] = Bt[n] * u[b * M + m];
        Tensor O = wrap(out + m * N, {B, N}, {ldo, 1});
        O.addmm_(wrap(const_cast<T*>(c + m * N), {B, N}, {ldc, 1}), wrap(const_cast<T*>(At), {N, N}, {1, N}));
      }
      return;
    }
    for (int64_t b = 0; b < B; ++b)
      for (int64_t m = 0; m < M; ++m) {
        const T* cq = c + b * ldc + m * N;
        const T uq = u[b * M + m];
        T* o = out + b * ldo + m * N;
        for (int64_t j = 0; j < N; ++j) {
          const T* a = At + j * N;
          const int64_t end = lower ? j + 1 : N;
          T acc = 0;
_Pragma("omp simd reduction(+ : acc)")
          for (int64_t i = 0; i < end; ++i) acc += a[i] * cq[i];
          o[j] = acc + Bt[j] * uq;
        }
      }
  }

  // (dc, du) = the adjoint of the step at t applied to dx; dx and dc [B, M, N] contiguous, du [B, M]
  void backward(const T* dx, int64_t B, int64_t M, int64_t t, T* dc, T* du) {
    const int64_t R = B * M;
    if (mode == 1) {
      if (t == 0) {
        for (int64_t q = 0; q < R; ++q) {
          du[q] = dx[q * N];
          for (int64_t n = 0; n < N; ++n) dc[q * N + n] = T(0);
        }
        return;
      }
      coefficients(t);
      gather(dx, M * N, B, M);
      acc1.assign(R, T(0));  // G: the transposed substitution's running sum
      acc2.assign(R, T(0));  // sum_{n' > n} s_n' dy_n'
      T* G = acc1.data();
      T* acc = acc2.data();
      for (int64_t n = N - 1; n >= 0; --n) {
        T* g = xt.data() + n * R;
        const T pn = p1[n], sn = s[n], rn = r[n], dn = iD[n];
        if (alpha != 0.0) {
_Pragma("omp simd")
          for (int64_t q = 0; q < R; ++q) {
            const T dy = (g[q] + sn * G[q]) * dn;
            G[q] -= rn * dy;
            g[q] = pn * dy - k * sn * acc[q];  // dc_n = p1_n dy_n - k s_n sum_{n' > n} s_n' dy_n'
            acc[q] += sn * dy;
          }
        } else {
_Pragma("omp simd")
          for (int64_t q = 0; q < R; ++q) {
            const T dy = g[q];
            g[q] = pn * dy - k * sn * acc[q];
            acc[q] += sn * dy;
          }
        }
      }
      for (int64_t q = 0; q < R; ++q) du[q] = d * acc[q];
      scatter(dc, M * N, B, M);
      return;
    }
    const T* At = A(t);
    const T* Bt = Bv(t);
    for (int64_t q = 0; q < R; ++q) {
      const T* g = dx + q * N;
      T acc = 0;
      for (int64_t n = 0; n < N; ++n) acc += Bt[n] * g[n];
      du[q] = acc;
    }
    if (R * N * N >= kBlasMacs) {
      Tensor O = wrap(dc, {R, N}, {N, 1});
      at::mm_out(O, wrap(const_cast<T*>(dx), {R, N}, {N, 1}), wrap(const_cast<T*>(At), {N, N}, {N, 1}));
      return;
    }
    for (int64_t q = 0; q < R; ++q) {
      const T* g = dx + q * N;
      T* o = dc + q * N;
      for (int64_t n = 0; n < N; ++n) o[n] = T(0);
      for (int64_t j = 0; j < N; ++j) {  // dc += dx_j A_t[j, :]
        const T* a = At + j * N;
        const T gj = g[j];
        const int64_t end = lower ? j + 1 : N;
        for (int64_t i = 0; i < end; ++i) o[i] += gj * a[i];
      }
    }
  }
};

template <typename T>
Memory<T> make_memory(int64_t mode, int64_t N, int64_t C, int64_t first, bool lower, double alpha,
                      const std::vector<Tensor>& As, const std::vector<Tensor>& Bs) {
  Memory<T> m;
  m.mode = int(mode);
  m.N = N;
  m.C = C;
  m.first = first;
  m.lower = lower;
  m.alpha = alpha;
  for (const auto& a : As) m.As.push_back(a.data_ptr<T>());
  for (const auto& b : Bs) m.Bs.push_back(b.data_ptr<T>());
  m.s.resize(N);
  m.p1.resize(N);
  m.iD.resize(N);
  m.r.resize(N);
  return m;
}

// ------------------------------------------------------------------------------------ HiPPO cell
// models/hippo.py HiPPOLegS.forward, one step:
//   u = xu_t + h W_uh;  c = A_t c + B_t u;  [hh, g] = xhg_t + vec(c) W_hgm;  h = h + sigmoid(g) (tanh(hh) - h)
// xu [B, T, M] (batch first, any strides with a contiguous last dim), h0 [B, H], c0 [B, M, N], w_uh [H, M],
// w_hgm [M N, 2H] (x . W form). The input's part of [hh, g]: with wx empty, xin = xhg [B, T, 2H] (computed
// before the loop); else xin = x [B, T, D] and xhg_t = bias + x_t wx, wx [D, 2H], in the loop (a narrow input:
// no [B, T, 2H] tensor). Returns ys [B, T, H], hT, cT and, with save, cs [B, T, M, N] (every c_t) and
// gates [T, B, 2H] (tanh(hh), sigmoid(g)) for the backward.
std::vector<Tensor> hippo_forward(Tensor xu, Tensor xin, Tensor wx, Tensor bias, Tensor h0, Tensor c0,
                                  Tensor w_uh, Tensor w_hgm, int64_t mode, int64_t C, int64_t first, bool lower,
                                  double alpha, std::vector<Tensor> As, std::vector<Tensor> Bs, int64_t t0,
                                  bool save) {
  const int64_t B = xu.size(0), T_ = xu.size(1), M = xu.size(2), H = h0.size(1), N = c0.size(2);
  const int64_t MN = M * N;
  auto ys = pooled_empty({B, T_, H}, h0.options());
  auto cs = save ? pooled_empty({B, T_, M, N}, c0.options()) : pooled_empty({2, B, M, N}, c0.options());
  auto gates = pooled_empty({save ? T_ : 1, B, 2 * H}, h0.options());
  auto hT = h0.clone();
  auto cT = c0.clone();
  AT_DISPATCH_FLOATING_TYPES(xu.scalar_type(), "hippo_forward", [&] {
    using T = scalar_t;
    auto mem = make_memory<T>(mode, N, C, first, lower, alpha, As, Bs);
    Steps<T> XU(xu), XIN(xin);
    const bool folded = wx.numel() > 0;
    const int64_t D = folded ? wx.size(0) : 0;
    const T* WX = folded ? wx.data_ptr<T>() : nullptr;
    const T* BI = folded ? bias.data_ptr<T>() : nullptr;
    const T* WU = w_uh.data_ptr<T>();
    const T* WHG = w_hgm.data_ptr<T>();
    T* Y = ys.data_ptr<T>();
    T* CS = cs.data_ptr<T>();
    T* G = gates.data_ptr<T>();
    std::vector<T> u(B * M);
    const T* h = h0.data_ptr<T>();
    int64_t ldh = H;
    const T* c = c0.data_ptr<T>();
    int64_t ldc = MN;
    const int64_t ldcs = save ? T_ * MN : MN;  // the saved states' rows
    for (int64_t k = 0; k < T_; ++k) {
      const T* xuk = XU.at(k);
      for (int64_t b = 0; b < B; ++b) std::copy(xuk + b * XU.sb, xuk + b * XU.sb + M, u.begin() + b * M);
      mm_acc(h, ldh, B, H, WU, M, u.data(), M);
      T* cn = save ? CS + k * MN : CS + (k % 2) * B * MN;
      mem.forward(c, ldc, u.data(), B, M, t0 + k, cn, ldcs);
      T* g = G + (save ? k : 0) * B * 2 * H;  // the pre-activations, then (tanh, sigmoid) in place
      const T* xk = XIN.at(k);
      if (folded) {
        for (int64_t b = 0; b < B; ++b) std::copy(BI, BI + 2 * H, g + b * 2 * H);
        mm_acc(xk, XIN.sb, B, D, WX, 2 * H, g, 2 * H);
      } else {
        for (int64_t b = 0; b < B; ++b) std::copy(xk + b * XIN.sb, xk + b * XIN.sb + 2 * H, g + b * 2 * H);
      }
      mm_acc(cn, ldcs, B, MN, WHG, 2 * H, g, 2 * H);
      tanh_sigmoid_(g, B, H);
      T* hn = Y + k * H;
      gated_update(g, h, ldh, B, H, hn, T_ * H);
      h = hn;
      ldh = T_ * H;
      c = cn;
      ldc = ldcs;
    }
    T* hTp = hT.data_ptr<T>();
    T* cTp = cT.data_ptr<T>();
    for (int64_t b = 0; b < B && T_ > 0; ++b) {
      std::copy(h + b * ldh, h + b * ldh + H, hTp + b * H);
      std::copy(c + b * ldc, c + b * ldc + MN, cTp + b * MN);
    }
  });
  if (!save) cs = at::Tensor();
  return {ys, hT, cT, cs, gates};
}

// The backward of hippo_forward: dys [B, T, H] (any strides, last dim contiguous), dhT [B, H], dcT [B, M, N];
// w_uhT [M, H], w_hgmT [2H, M N]; xin and folded as the forward's. Returns dxu [B, T, M], dxhg [B, T, 2H], dh0,
// dc0, dw_uh and, folded, wx's and the bias's gradients (W_hgm's is one product of cs and dxhg, in Python).
std::vector<Tensor> hippo_backward(Tensor dys, Tensor dhT, Tensor dcT, Tensor ys, Tensor h0, Tensor gates,
                                   Tensor w_uhT, Tensor w_hgmT, Tensor xin, bool folded, int64_t mode, int64_t C,
                                   int64_t first, bool lower, double alpha, std::vector<Tensor> As,
                                   std::vector<Tensor> Bs, int64_t t0) {
  const int64_t B = ys.size(0), T_ = ys.size(1), H = ys.size(2), M = w_uhT.size(0), N = dcT.size(2);
  const int64_t MN = M * N, D = folded ? xin.size(2) : 0;
  auto dxu = pooled_empty({B, T_, M}, ys.options());
  auto dxhg = pooled_empty({B, T_, 2 * H}, ys.options());
  auto dw_uh = at::zeros({H, M}, ys.options());
  auto dwx = at::zeros({D, 2 * H}, ys.options());  // folded input: its weight's and the bias's gradients,
  auto dbias = at::zeros({folded ? 2 * H : 0}, ys.options());  // summed while dxhg's rows are in cache
  auto dh = dhT.clone();
  auto dc = dcT.clone();
  AT_DISPATCH_FLOATING_TYPES(ys.scalar_type(), "hippo_backward", [&] {
    using T = scalar_t;
    auto mem = make_memory<T>(mode, N, C, first, lower, alpha, As, Bs);
    Steps<T> DY(dys);
    const T* Y = ys.data_ptr<T>();
    const T* H0 = h0.data_ptr<T>();
    const T* G = gates.data_ptr<T>();
    const T* WUT = w_uhT.data_ptr<T>();
    const T* WHGT = w_hgmT.data_ptr<T>();
    T* DXU = dxu.data_ptr<T>();
    T* DXHG = dxhg.data_ptr<T>();
    T* DWU = dw_uh.data_ptr<T>();
    T* DWX = dwx.data_ptr<T>();
    T* DBI = dbias.data_ptr<T>();
    Steps<T> XIN(xin);
    T* dH = dh.data_ptr<T>();
    T* dC = dc.data_ptr<T>();
    std::vector<T> dcp(B * MN), du(B * M);
    for (int64_t k = T_ - 1; k >= 0; --k) {
      const T* dy = DY.at(k);
      const T* hp = k > 0 ? Y + (k - 1) * H : H0;
      const int64_t ldh = k > 0 ? T_ * H : H;
      const T* g = G + k * B * 2 * H;
      T* dpre = DXHG + k * 2 * H;
      gated_update_backward(g, hp, ldh, B, H, dH, dy, DY.sb, dpre, T_ * 2 * H);
      if (folded) {
        const T* xk = XIN.at(k);
        for (int64_t b = 0; b < B; ++b) {
          const T* pb = dpre + b * T_ * 2 * H;
          _Pragma("omp simd")
          for (int64_t j = 0; j < 2 * H; ++j) DBI[j] += pb[j];
          for (int64_t i = 0; i < D; ++i) {
            const T xi = xk[b * XIN.sb + i];
            T* w = DWX + i * 2 * H;
            _Pragma("omp simd")
            for (int64_t j = 0; j < 2 * H; ++j) w[j] += xi * pb[j];
          }
        }
      }
      mm_acc(dpre, T_ * 2 * H, B, 2 * H, WHGT, MN, dC, MN);
      mem.backward(dC, B, M, t0 + k, dcp.data(), du.data());
      std::copy(dcp.begin(), dcp.end(), dC);
      for (int64_t b = 0; b < B; ++b) {
        std::copy(du.begin() + b * M, du.begin() + (b + 1) * M, DXU + b * T_ * M + k * M);
        const T* hb = hp + b * ldh;  // dW_uh += h_{t-1}^T du
        for (int64_t m = 0; m < M; ++m) {
          const T dum = du[b * M + m];
          _Pragma("omp simd")
          for (int64_t i = 0; i < H; ++i) DWU[i * M + m] += hb[i] * dum;
        }
      }
      mm_acc(du.data(), M, B, M, WUT, H, dH, H);
    }
  });
  return {dxu, dxhg, dh, dc, dw_uh, dwx, dbias};
}

// The memory step alone over a sequence of inputs (a check of the kernels against models/hippo.py's steps):
// cs[T, R, N] from c0 [R, N] and us [T, R] (R channels: B = R, M = 1).
std::vector<Tensor> memory_scan(Tensor c0, Tensor us, int64_t mode, int64_t C, int64_t first, bool lower,
                                double alpha, std::vector<Tensor> As, std::vector<Tensor> Bs, int64_t t0) {
  const int64_t T_ = us.size(0), R = us.size(1), N = c0.size(1);
  auto cs = at::empty({T_, R, N}, c0.options());
  AT_DISPATCH_FLOATING_TYPES(c0.scalar_type(), "memory_scan", [&] {
    using T = scalar_t;
    auto mem = make_memory<T>(mode, N, C, first, lower, alpha, As, Bs);
    const T* c = c0.data_ptr<T>();
    for (int64_t k = 0; k < T_; ++k) {
      T* o = cs.data_ptr<T>() + k * R * N;
      mem.forward(c, N, us.data_ptr<T>() + k * R, R, 1, t0 + k, o, N);
      c = o;
    }
  });
  return {cs};
}

// ------------------------------------------------------------------------------------ ENRNN / scoRNN
// models/enrnn.py ENRNN.scan: z = xu_t + h W^T, h = relu(|z| + b) sign(z). xu [B, T, n] (batch first, any
// strides, last dim contiguous), h0 [B, n], wt = W^T [n, n], b [n]. Returns ys [B, T, n] and zs [T, B, n]
// (saved for the backward).
std::vector<Tensor> enrnn_forward(Tensor xu, Tensor h0, Tensor wt, Tensor bias) {
  const int64_t B = xu.size(0), T_ = xu.size(1), n = xu.size(2);
  auto ys = pooled_empty({B, T_, n}, xu.options());
  auto zs = pooled_empty({T_, B, n}, xu.options());
  AT_DISPATCH_FLOATING_TYPES(xu.scalar_type(), "enrnn_forward", [&] {
    using T = scalar_t;
    Steps<T> XU(xu);
    const T* W = wt.data_ptr<T>();
    const T* bb = bias.data_ptr<T>();
    const T* h = h0.data_ptr<T>();
    int64_t ldh = n;
    for (int64_t k = 0; k < T_; ++k) {
      T* z = zs.data_ptr<T>() + k * B * n;
      for (int64_t b = 0; b < B; ++b) std::copy(XU.at(k) + b * XU.sb, XU.at(k) + b * XU.sb + n, z + b * n);
      mm_acc(h, ldh, B, n, W, n, z, n);
      T* y = ys.data_ptr<T>() + k * n;
      for (int64_t b = 0; b < B; ++b) {
        const T* zb = z + b * n;
        T* yb = y + b * T_ * n;
        _Pragma("omp simd")
        for (int64_t j = 0; j < n; ++j) {
          const T a = std::abs(zb[j]) + bb[j];
          const T sg = T((zb[j] > 0) - (zb[j] < 0));
          yb[j] = (a > 0 ? a : T(0)) * sg;
        }
      }
      h = y;
      ldh = T_ * n;
    }
  });
  return {ys, zs};
}

// The backward: dys [B, T, n] (any strides, last dim contiguous), dhT [B, n], w = W [n, n]. Returns
// dz [B, T, n] (= dxu), dh0, db.
std::vector<Tensor> enrnn_backward(Tensor dys, Tensor dhT, Tensor zs, Tensor w, Tensor bias) {
  const int64_t T_ = zs.size(0), B = zs.size(1), n = zs.size(2);
  auto dz = pooled_empty({B, T_, n}, zs.options());
  auto dh = dhT.clone();
  auto db = at::zeros({n}, zs.options());
  AT_DISPATCH_FLOATING_TYPES(zs.scalar_type(), "enrnn_backward", [&] {
    using T = scalar_t;
    Steps<T> DY(dys);
    const T* W = w.data_ptr<T>();
    const T* bb = bias.data_ptr<T>();
    T* dH = dh.data_ptr<T>();
    T* dB = db.data_ptr<T>();
    for (int64_t k = T_ - 1; k >= 0; --k) {
      const T* z = zs.data_ptr<T>() + k * B * n;
      T* g = dz.data_ptr<T>() + k * n;
      for (int64_t b = 0; b < B; ++b) {
        const T* zb = z + b * n;
        const T* dyb = DY.at(k) + b * DY.sb;
        T* gb = g + b * T_ * n;
        T* dHb = dH + b * n;
        _Pragma("omp simd")
        for (int64_t j = 0; j < n; ++j) {
          const T d = dHb[j] + dyb[j];
          const T sg = T((zb[j] > 0) - (zb[j] < 0));
          const T on = (std::abs(zb[j]) + bb[j]) > 0 ? d * sg : T(0);  // relu' (0 at 0), times sign(z)
          dB[j] += on;
          gb[j] = on * sg;
          dHb[j] = 0;
        }
      }
      mm_acc(g, T_ * n, B, n, W, n, dH, n);
    }
  });
  return {dz, dh, db};
}

// ------------------------------------------------------------------------------------ RHN
// models/rhn.py RHN.forward: per step, L micro-layers
//   pre = b_l + (s * mask) R_l^T (+ xw_t at l = 0);  h = tanh(pre[:w]), g = sigmoid(pre[w:]);  s = s + g (h - s)
// xw [B, T, 2w] (batch first, any strides, last dim contiguous), s0 [B, w], rt [L, w, 2w] (R_l^T),
// bias [L, 2w], mask [B, w] (empty: none). Returns ys [B, T, w] and, with save, ss [L, T, B, w] (the state
// entering each micro-layer) and hg [L, T, B, 2w] (tanh, sigmoid): layer first, so that the weights'
// gradients are one batched product.
std::vector<Tensor> rhn_forward(Tensor xw, Tensor s0, Tensor rt, Tensor bias, Tensor mask, bool save) {
  const int64_t B = xw.size(0), T_ = xw.size(1), w = s0.size(1), L = rt.size(0);
  auto ys = pooled_empty({B, T_, w}, xw.options());
  const int64_t TS = save ? T_ : 1;
  auto ss = pooled_empty({L, TS, B, w}, xw.options());
  auto hg = pooled_empty({L, TS, B, 2 * w}, xw.options());
  const bool masked = mask.numel() > 0;
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "rhn_forward", [&] {
    using T = scalar_t;
    Steps<T> XW(xw);
    const T* R = rt.data_ptr<T>();
    const T* bb = bias.data_ptr<T>();
    const T* mk = masked ? mask.data_ptr<T>() : nullptr;
    std::vector<T> s(s0.data_ptr<T>(), s0.data_ptr<T>() + B * w), sm(B * w);
    for (int64_t t = 0; t < T_; ++t) {
      for (int64_t l = 0; l < L; ++l) {
        const int64_t slot = l * TS + (save ? t : 0);
        T* sin = ss.data_ptr<T>() + slot * B * w;
        T* g = hg.data_ptr<T>() + slot * B * 2 * w;
        std::copy(s.begin(), s.end(), sin);
        for (int64_t b = 0; b < B; ++b) {  // the pre-activations in the (tanh, sigmoid) slot
          T* pb = g + b * 2 * w;
          if (l == 0) {
            const T* x = XW.at(t) + b * XW.sb;
            for (int64_t j = 0; j < 2 * w; ++j) pb[j] = bb[j] + x[j];
          } else {
            std::copy(bb + l * 2 * w, bb + (l + 1) * 2 * w, pb);
          }
        }
        const T* sr = s.data();
        if (masked) {
          for (int64_t i = 0; i < B * w; ++i) sm[i] = s[i] * mk[i];
          sr = sm.data();
        }
        mm_acc(sr, w, B, w, R + l * w * 2 * w, 2 * w, g, 2 * w);
        tanh_sigmoid_(g, B, w);
        gated_update(g, s.data(), w, B, w, s.data(), w);
      }
      T* y = ys.data_ptr<T>() + t * w;
      for (int64_t b = 0; b < B; ++b) std::copy(s.begin() + b * w, s.begin() + (b + 1) * w, y + b * T_ * w);
    }
  });
  return {ys, ss, hg};
}

// The backward: dys [B, T, w] (any strides, last dim contiguous), dsT [B, w], r = [L, 2w, w] (R_l). Returns
// dpre [L, T, B, 2w] (the pre-activations' gradients, for the weights' gradients with ss), dxw [B, T, 2w]
// (= dpre[0], batch first) and ds0.
std::vector<Tensor> rhn_backward(Tensor dys, Tensor dsT, Tensor ss, Tensor hg, Tensor r, Tensor mask) {
  const int64_t L = ss.size(0), T_ = ss.size(1), B = ss.size(2), w = ss.size(3);
  auto dpre = pooled_empty({L, T_, B, 2 * w}, ss.options());
  auto dxw = pooled_empty({B, T_, 2 * w}, ss.options());
  auto ds = dsT.clone();
  const bool masked = mask.numel() > 0;
  AT_DISPATCH_FLOATING_TYPES(ss.scalar_type(), "rhn_backward", [&] {
    using T = scalar_t;
    Steps<T> DY(dys);
    const T* R = r.data_ptr<T>();
    const T* mk = masked ? mask.data_ptr<T>() : nullptr;
    T* dS = ds.data_ptr<T>();
    std::vector<T> dr(B * w);
    for (int64_t t = T_ - 1; t >= 0; --t) {
      for (int64_t b = 0; b < B; ++b) {
        const T* dyb = DY.at(t) + b * DY.sb;
        for (int64_t j = 0; j < w; ++j) dS[b * w + j] += dyb[j];
      }
      for (int64_t l = L - 1; l >= 0; --l) {
        const int64_t slot = l * T_ + t;
        const T* sin = ss.data_ptr<T>() + slot * B * w;
        const T* g = hg.data_ptr<T>() + slot * B * 2 * w;
        T* dp = dpre.data_ptr<T>() + slot * B * 2 * w;
        gated_update_backward(g, sin, w, B, w, dS, static_cast<const T*>(nullptr), 0, dp, 2 * w);
        if (l == 0) {
          T* x = dxw.data_ptr<T>() + t * 2 * w;
          for (int64_t b = 0; b < B; ++b) std::copy(dp + b * 2 * w, dp + (b + 1) * 2 * w, x + b * T_ * 2 * w);
        }
        std::fill(dr.begin(), dr.end(), T(0));
        mm_acc(dp, 2 * w, B, 2 * w, R + l * 2 * w * w, w, dr.data(), w);
        for (int64_t i = 0; i < B * w; ++i) dS[i] += masked ? dr[i] * mk[i] : dr[i];
      }
    }
  });
  return {dpre, dxw, ds};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("hippo_forward", &hippo_forward);
  m.def("hippo_backward", &hippo_backward);
  m.def("memory_scan", &memory_scan);
  m.def("enrnn_forward", &enrnn_forward);
  m.def("enrnn_backward", &enrnn_backward);
  m.def("rhn_forward", &rhn_forward);
  m.def("rhn_backward", &rhn_backward);
  m.def("blas_macs", [] { return kBlasMacs; });
}
