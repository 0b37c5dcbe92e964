// AdamW with paged fp32 / 8-bit state. Layout, placement and the streaming pipeline.
//
// Layout. Parameters are grouped by state format (fp32, 8-bit). Within a group each parameter
// gets an offset in one flat element space, padded to a multiple of 256 so that 8-bit blocks never
// straddle parameters. The flat space is cut into pages of `chunk` elements (a multiple of 256,
// so blocks never straddle pages either). A page holds, for its chunk:
//   fp32:  p[chunk] f32 | m[chunk] f32 | v[chunk] f32
//   8-bit: p[chunk] f32 | absmax_m[chunk/256] f32 | absmax_v[chunk/256] f32 | m[chunk] u8 | v[chunk] u8
// A page lists its segments: the runs of real (non-padding) elements of each parameter it covers.
//
// Placement. Device slots hold `slots` pages. If every page fits, every page is resident (that is
// also the unpaged optimizer). Otherwise the first slots-2 pages are resident and the others live
// in the host pool and stream through the last 2 slots: visit c of a streamed page uses slot
// c % 2; after its update the page is copied back to the host and the page of visit c+2 is copied
// into the slot, all on the copy queue, overlapping the update of visit c+1. The last visits of a
// step prefetch the first pages of the next one.
#include "trainer/optim/adamw.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <set>

#include "kernels/adamw.h"
#include "kernels/ops.h"
#include "kernels/step_profile.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"

namespace qlora::optim {

namespace {

constexpr int64_t kBlock = adamw::kBlock8bit;
constexpr int64_t kStreamSlots = 2;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Byte offsets of the fields inside a page of `chunk` elements.
struct PageLayout {
  int64_t chunk = 0;
  int64_t off_p = 0, off_m = 0, off_v = 0, off_am = 0, off_av = 0;
  int64_t bytes = 0;  // bytes used by one page
};

PageLayout make_layout(bool is8bit, int64_t chunk) {
  PageLayout l;
  l.chunk = chunk;
  if (!is8bit) {
    l.off_p = 0;
    l.off_m = 4 * chunk;
    l.off_v = 8 * chunk;
    l.bytes = 12 * chunk;
  } else {
    const int64_t nb = chunk / kBlock;
    l.off_p = 0;
    l.off_am = 4 * chunk;
    l.off_av = l.off_am + 4 * nb;
    l.off_m = l.off_av + 4 * nb;
    l.off_v = l.off_m + chunk;
    l.bytes = l.off_v + chunk;
  }
  return l;
}

// Largest multiple of 256 elements whose page fits in page_bytes (at least 256).
int64_t chunk_for(bool is8bit, int64_t page_bytes) {
  const int64_t per_block = make_layout(is8bit, kBlock).bytes;  // bytes for 256 elements
  return std::max<int64_t>(1, page_bytes / per_block) * kBlock;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

}  // namespace

struct AdamW::Impl {
  struct Param {
    std::string name;
    std::vector<int64_t> shape;
    int64_t numel = 0;
    bool is8bit = false;
    double lr_scale = 1.0;
    int64_t flat = 0;  // offset in its group's flat space
  };
  struct Segment {
    int param;
    int64_t begin;     // first element, in the parameter
    int64_t len;       // elements
    int64_t page_off;  // first element, in the page (a multiple of 256)
  };
  struct Page {
    bool is8bit = false;
    std::vector<Segment> segs;
    int64_t slot = -1;  // device slot when resident
    int64_t host = -1;  // host pool page when streamed
  };

  AdamWOptions opt;
  at::Device device;
  std::vector<Param> params;
  std::vector<Page> pages;
  std::vector<std::vector<std::pair<int64_t, int64_t>>> param_segs;  // param -> (page, seg)
  PageLayout layout32, layout8;
  int64_t page_bytes = 0;
  int64_t resident = 0;           // pages[0, resident) are resident in slots [0, resident)
  std::vector<int64_t> streamed;  // page indices that stream (in visit order)
  int64_t stream_slots = 0;
  int64_t visit = 0;  // streamed-page visits so far (selects the slot)
  std::unique_ptr<CopyQueue> queue;
  std::vector<std::unique_ptr<CopyMark>> in_marks;  // per streaming slot: its page has arrived
  at::Tensor slots_buf, host_buf;
  at::Tensor map_m, map_v;  // dynamic maps on the device
  PagingStats stats;

  Impl(const AdamWOptions& o, at::Device d) : opt(o), device(d) {}

  const PageLayout& layout(bool is8bit) const { return is8bit ? layout8 : layout32; }

  void build_pages(int64_t pbytes) {
    page_bytes = pbytes;
    layout32 = make_layout(false, chunk_for(false, pbytes));
    layout8 = make_layout(true, chunk_for(true, pbytes));
    pages.clear();
    param_segs.assign(params.size(), {});
    for (bool is8 : {false, true}) {
      const int64_t chunk = layout(is8).chunk;
      int64_t flat = 0;
      std::vector<int> members;
      for (size_t i = 0; i < params.size(); ++i) {
        if (params[i].is8bit != is8) continue;
        params[i].flat = flat;
        flat += ceil_div(params[i].numel, kBlock) * kBlock;
        members.push_back(static_cast<int>(i));
      }
      const int64_t npages = ceil_div(flat, chunk);
      size_t next = 0;  // first member that may overlap the page
      for (int64_t pg = 0; pg < npages; ++pg) {
        Page page;
        page.is8bit = is8;
        const int64_t lo = pg * chunk, hi = lo + chunk;
        while (next < members.size() && params[members[next]].flat + params[members[next]].numel <= lo) ++next;
        for (size_t k = next; k < members.size(); ++k) {
          const Param& p = params[members[k]];
          if (p.flat >= hi) break;
          const int64_t b = std::max(lo, p.flat), e = std::min(hi, p.flat + p.numel);
          if (b >= e) continue;
          param_segs[members[k]].emplace_back(static_cast<int64_t>(pages.size()),
                                              static_cast<int64_t>(page.segs.size()));
          page.segs.push_back({members[k], b - p.flat, e - b, b - lo});
        }
        pages.push_back(std::move(page));
      }
    }
  }

  // Decides page size and placement from the options and the device's budget.
  void place() {
    build_pages(opt.paging.page_bytes);
    const int64_t n = static_cast<int64_t>(pages.size());
    std::optional<int64_t> budget;
    if (opt.paging.enabled) budget = opt.paging.device_budget ? opt.paging.device_budget : queue->auto_budget();
    int64_t slots = n;
    if (budget && n * page_bytes > *budget) {
      if (*budget / page_bytes < kStreamSlots) {
        // Too small for two pages: shrink the pages (down to 256 elements each).
        const int64_t min_page = std::max(make_layout(false, kBlock).bytes, make_layout(true, kBlock).bytes);
        build_pages(std::max(min_page, *budget / kStreamSlots));
      }
      slots = std::max<int64_t>(kStreamSlots, *budget / page_bytes);
    }
    const int64_t total = static_cast<int64_t>(pages.size());
    if (slots >= total) {
      resident = total;
      stream_slots = 0;
    } else {
      stream_slots = kStreamSlots;
      resident = slots - kStreamSlots;
    }
    streamed.clear();
    for (int64_t i = 0; i < total; ++i) {
      if (i < resident) {
        pages[i].slot = i;
      } else {
        pages[i].host = static_cast<int64_t>(streamed.size());
        streamed.push_back(i);
      }
    }
    slots_buf = queue->device_buffer((resident + stream_slots) * page_bytes);
    if (!streamed.empty()) host_buf = queue->host_buffer(static_cast<int64_t>(streamed.size()) * page_bytes);
    in_marks.clear();
    for (int64_t s = 0; s < stream_slots; ++s) in_marks.push_back(queue->new_mark());
    stats.pages = total;
    stats.page_bytes = page_bytes;
    stats.resident_pages = resident;
    stats.streamed_pages = static_cast<int64_t>(streamed.size());
    stats.streaming_slots = stream_slots;
  }

  at::Tensor slot_page(int64_t slot) const { return slots_buf.narrow(0, slot * page_bytes, page_bytes); }
  at::Tensor host_page(int64_t host) const { return host_buf.narrow(0, host * page_bytes, page_bytes); }
  // Where page i's current contents are (valid when the queue is idle).
  at::Tensor home(int64_t i) const { return pages[i].slot >= 0 ? slot_page(pages[i].slot) : host_page(pages[i].host); }

  static at::Tensor f32(const at::Tensor& page, int64_t byte_off, int64_t n) {
    return page.narrow(0, byte_off, 4 * n).view(at::kFloat);
  }

  enum class Field { P, M, V, AbsmaxM, AbsmaxV };

  // The view of `field` for one segment inside `page_buf`.
  at::Tensor field_view(const Page& page, const Segment& s, Field f, const at::Tensor& page_buf) const {
    const PageLayout& l = layout(page.is8bit);
    switch (f) {
      case Field::P: return f32(page_buf, l.off_p + 4 * s.page_off, s.len);
      case Field::M:
        return page.is8bit ? page_buf.narrow(0, l.off_m + s.page_off, s.len)
                           : f32(page_buf, l.off_m + 4 * s.page_off, s.len);
      case Field::V:
        return page.is8bit ? page_buf.narrow(0, l.off_v + s.page_off, s.len)
                           : f32(page_buf, l.off_v + 4 * s.page_off, s.len);
      case Field::AbsmaxM: return f32(page_buf, l.off_am + 4 * (s.page_off / kBlock), ceil_div(s.len, kBlock));
      case Field::AbsmaxV: return f32(page_buf, l.off_av + 4 * (s.page_off / kBlock), ceil_div(s.len, kBlock));
    }
    TORCH_CHECK(false, "unreachable");
  }

  // Elements of `field` for a segment, in the parameter's coordinates: [begin, begin+len).
  static std::pair<int64_t, int64_t> field_range(const Segment& s, Field f) {
    if (f == Field::AbsmaxM || f == Field::AbsmaxV) return {s.begin / kBlock, ceil_div(s.len, kBlock)};
    return {s.begin, s.len};
  }

  // Copies `field` of parameter i out of the pages into a flat CPU tensor. Queue must be idle.
  at::Tensor gather(size_t i, Field f) const {
    const Param& p = params[i];
    const bool blocks = f == Field::AbsmaxM || f == Field::AbsmaxV;
    const bool codes = p.is8bit && (f == Field::M || f == Field::V);
    at::Tensor out = at::empty({blocks ? ceil_div(p.numel, kBlock) : p.numel}, codes ? at::kByte : at::kFloat);
    for (auto [pi, si] : param_segs[i]) {
      const Segment& s = pages[pi].segs[si];
      auto [b, n] = field_range(s, f);
      out.narrow(0, b, n).copy_(field_view(pages[pi], s, f, home(pi)));
    }
    return out;
  }

  // Copies a flat tensor into `field` of parameter i. Queue must be idle.
  void scatter(size_t i, Field f, const at::Tensor& src) {
    for (auto [pi, si] : param_segs[i]) {
      const Segment& s = pages[pi].segs[si];
      auto [b, n] = field_range(s, f);
      field_view(pages[pi], s, f, home(pi)).copy_(src.narrow(0, b, n));
    }
  }

  // Queues the copies for the next kStreamSlots visits (after init, load, or a step).
  void prefetch(int64_t first_visit, int64_t count) {
    const int64_t ns = static_cast<int64_t>(streamed.size());
    for (int64_t c = first_visit; c < first_visit + count; ++c) {
      const int64_t s = c % stream_slots;
      queue->copy(slot_page(resident + s), host_page(pages[streamed[c % ns]].host));
      queue->record(*in_marks[s]);
      ++stats.pages_in;
      stats.bytes_in += page_bytes;
    }
  }

  void run_page(const Page& page, const at::Tensor& buf, const std::vector<adamw::Hyper>& hs,
                const std::vector<at::Tensor>& g, const std::vector<at::Tensor>& out) {
    for (const Segment& s : page.segs) {
      if (!g[s.param].defined()) continue;
      const adamw::Hyper& h = hs[s.param];
      at::Tensor gs = g[s.param].narrow(0, s.begin, s.len);
      at::Tensor os = out[s.param].defined() ? out[s.param].narrow(0, s.begin, s.len) : at::Tensor();
      at::Tensor p = field_view(page, s, Field::P, buf);
      at::Tensor m = field_view(page, s, Field::M, buf);
      at::Tensor v = field_view(page, s, Field::V, buf);
      if (page.is8bit) {
        at::Tensor am = field_view(page, s, Field::AbsmaxM, buf);
        at::Tensor av = field_view(page, s, Field::AbsmaxV, buf);
        kernels::adamw_step_8bit(h, p, m, v, am, av, gs, os, map_m, map_v);
      } else {
        kernels::adamw_step_fp32(h, p, m, v, gs, os);
      }
    }
  }
};

AdamW::AdamW(const std::vector<NamedParam>& params, const AdamWOptions& options, at::Device device)
    : impl_(std::make_unique<Impl>(options, device)) {
  TORCH_CHECK(options.beta1 >= 0 && options.beta1 < 1 && options.beta2 >= 0 && options.beta2 < 1,
              "AdamW: betas must be in [0, 1)");
  TORCH_CHECK(options.eps >= 0 && options.weight_decay >= 0, "AdamW: eps and weight_decay must be >= 0");
  TORCH_CHECK(options.paging.page_bytes > 0, "AdamW: page_bytes must be positive");
  Impl& I = *impl_;
  std::set<std::string> names;
  for (const NamedParam& np : params) {
    TORCH_CHECK(np.value.defined() && np.value.is_floating_point(), "AdamW: parameter ", np.name,
                " must be a floating tensor");
    TORCH_CHECK(names.insert(np.name).second, "AdamW: parameter name ", np.name, " given twice");
    Impl::Param p;
    p.name = np.name;
    p.shape = np.value.sizes().vec();
    p.numel = np.value.numel();
    p.is8bit = options.state_8bit && p.numel >= options.min_8bit_size;
    TORCH_CHECK(np.lr_scale > 0, "AdamW: lr_scale of ", np.name, " must be positive");
    p.lr_scale = np.lr_scale;
    I.params.push_back(std::move(p));
  }
  I.queue = CopyQueue::create(device);
  I.place();
  I.map_m = kernels::dynamic_map(true).to(device);
  I.map_v = kernels::dynamic_map(false).to(device);
  // m = v = 0 (8-bit: code 0 with absmax 0, as bitsandbytes initializes), p = the initial value.
  for (size_t i = 0; i < params.size(); ++i)
    I.scatter(i, Impl::Field::P, params[i].value.detach().to(at::kCPU, at::kFloat).contiguous().view(-1));
  if (!I.streamed.empty()) I.prefetch(I.visit, I.stream_slots);
}

AdamW::~AdamW() {
  if (impl_ && impl_->queue) impl_->queue->synchronize();
}

size_t AdamW::size() const { return impl_->params.size(); }
const std::string& AdamW::name(size_t i) const { return impl_->params.at(i).name; }
bool AdamW::is_8bit(size_t i) const { return impl_->params.at(i).is8bit; }

void AdamW::step(double lr, const std::vector<at::Tensor>& grads, const std::vector<at::Tensor>& compute) {
  Impl& I = *impl_;
  const size_t n = I.params.size();
  TORCH_CHECK(grads.size() == n, "AdamW::step: ", grads.size(), " gradients for ", n, " parameters");
  TORCH_CHECK(compute.empty() || compute.size() == n, "AdamW::step: ", compute.size(), " compute tensors for ", n,
              " parameters");
  std::vector<at::Tensor> g(n), out(n);
  for (size_t i = 0; i < n; ++i) {
    const Impl::Param& p = I.params[i];
    if (grads[i].defined()) {
      TORCH_CHECK(grads[i].numel() == p.numel && grads[i].is_contiguous() && grads[i].device() == I.device,
                  "AdamW::step: gradient of ", p.name, " must be contiguous on ", I.device, " with ", p.numel,
                  " elements");
      g[i] = grads[i].view({-1});
    }
    if (!compute.empty() && compute[i].defined()) {
      TORCH_CHECK(compute[i].numel() == p.numel && compute[i].is_contiguous() && compute[i].device() == I.device,
                  "AdamW::step: compute copy of ", p.name, " must be contiguous on ", I.device, " with ", p.numel,
                  " elements");
      out[i] = compute[i].view({-1});
    }
  }
  ++step_;
  std::vector<adamw::Hyper> h(n);
  for (size_t i = 0; i < n; ++i) {
    const double s = I.params[i].lr_scale;
    h[i] = i > 0 && s == I.params[i - 1].lr_scale
               ? h[i - 1]
               : kernels::adamw_hyper(s == 1.0 ? lr : lr * s, I.opt.beta1, I.opt.beta2, I.opt.eps, I.opt.weight_decay,
                                      step_);
  }

  // Resident pages first: their updates overlap the copies of the first streamed pages.
  for (int64_t i = 0; i < I.resident; ++i) I.run_page(I.pages[i], I.slot_page(I.pages[i].slot), h, g, out);

  const int64_t ns = static_cast<int64_t>(I.streamed.size());
  for (int64_t k = 0; k < ns; ++k, ++I.visit) {
    const int64_t s = I.visit % I.stream_slots;
    const Impl::Page& page = I.pages[I.streamed[I.visit % ns]];
    const at::Tensor slot = I.slot_page(I.resident + s);
    {
      kernels::profile::Scope prof(kernels::profile::Part::paging);
      I.queue->compute_wait(*I.in_marks[s]);
    }
    I.run_page(page, slot, h, g, out);
    I.queue->copies_wait_compute();
    I.queue->copy(I.host_page(page.host), slot);
    ++I.stats.pages_out;
    I.stats.bytes_out += I.page_bytes;
    I.prefetch(I.visit + I.stream_slots, 1);  // the page of visit + 2 into this slot
  }
}

at::Tensor AdamW::master(size_t i) const {
  impl_->queue->synchronize();
  return impl_->gather(i, Impl::Field::P).view(impl_->params.at(i).shape);
}

void AdamW::copy_master_to(size_t i, const at::Tensor& dst) const {
  TORCH_CHECK(dst.numel() == impl_->params.at(i).numel, "copy_master_to: ", impl_->params[i].name, " has ",
              impl_->params[i].numel, " elements, dst has ", dst.numel());
  at::Tensor d = dst;
  d.copy_(master(i).view(dst.sizes()));
}

OptimizerState AdamW::state_dict() const {
  const Impl& I = *impl_;
  I.queue->synchronize();
  OptimizerState st;
  nlohmann::json j;
  j["format"] = "qlora.adamw.v1";
  j["step"] = step_;
  j["betas"] = {I.opt.beta1, I.opt.beta2};
  j["eps"] = I.opt.eps;
  j["weight_decay"] = I.opt.weight_decay;
  j["state_8bit"] = I.opt.state_8bit;
  j["min_8bit_size"] = I.opt.min_8bit_size;
  j["params"] = nlohmann::json::array();
  using F = Impl::Field;
  for (size_t i = 0; i < I.params.size(); ++i) {
    const Impl::Param& p = I.params[i];
    j["params"].push_back({{"name", p.name}, {"shape", p.shape}, {"state", p.is8bit ? "8bit" : "fp32"}});
    st.tensors[p.name + ".master"] = I.gather(i, F::P).view(p.shape);
    if (p.is8bit) {
      st.tensors[p.name + ".state1"] = I.gather(i, F::M).view(p.shape);
      st.tensors[p.name + ".state2"] = I.gather(i, F::V).view(p.shape);
      st.tensors[p.name + ".absmax1"] = I.gather(i, F::AbsmaxM);
      st.tensors[p.name + ".absmax2"] = I.gather(i, F::AbsmaxV);
    } else {
      st.tensors[p.name + ".exp_avg"] = I.gather(i, F::M).view(p.shape);
      st.tensors[p.name + ".exp_avg_sq"] = I.gather(i, F::V).view(p.shape);
    }
  }
  st.json = j.dump();
  return st;
}

void AdamW::load_state_dict(const OptimizerState& state) {
  Impl& I = *impl_;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(state.json);
  } catch (const std::exception& e) { user_error("optimizer state: invalid JSON (", json_error_text(e), ")"); }
  if (!j.is_object() || j.value("format", "") != "qlora.adamw.v1")
    user_error("optimizer state: expected format \"qlora.adamw.v1\"");
  if (!j.contains("params") || !j["params"].is_array() || !j.contains("step") || !j["step"].is_number_integer())
    user_error("optimizer state: missing \"step\" or \"params\"");
  const auto& jp = j["params"];
  if (jp.size() != I.params.size())
    user_error("optimizer state: the checkpoint has ", jp.size(), " parameters, the model has ", I.params.size());
  using F = Impl::Field;
  // Validate everything before touching the state.
  auto need = [&](const std::string& key, at::ScalarType dt, std::vector<int64_t> shape) -> const at::Tensor& {
    auto it = state.tensors.find(key);
    if (it == state.tensors.end()) user_error("optimizer state: missing tensor \"", key, "\"");
    const at::Tensor& t = it->second;
    if (t.scalar_type() != dt || t.sizes().vec() != shape)
      user_error("optimizer state: \"", key, "\" is ", c10::toString(t.scalar_type()), " ", shape_str(t.sizes().vec()),
                 ", expected ", c10::toString(dt), " ", shape_str(shape));
    return t;
  };
  for (size_t i = 0; i < I.params.size(); ++i) {
    const Impl::Param& p = I.params[i];
    const auto& e = jp[i];
    const std::string name = e.value("name", "");
    if (name != p.name)
      user_error("optimizer state: parameter ", i, " is \"", name, "\" in the checkpoint but \"", p.name,
                 "\" in the model");
    const std::string kind = e.value("state", "");
    if (kind != (p.is8bit ? "8bit" : "fp32"))
      user_error("optimizer state: \"", p.name, "\" has ", kind, " state in the checkpoint but the optimizer keeps ",
                 p.is8bit ? "8bit" : "fp32", " state (optimizer or min_8bit_size changed)");
    need(p.name + ".master", at::kFloat, p.shape);
    if (p.is8bit) {
      need(p.name + ".state1", at::kByte, p.shape);
      need(p.name + ".state2", at::kByte, p.shape);
      need(p.name + ".absmax1", at::kFloat, {ceil_div(p.numel, kBlock)});
      need(p.name + ".absmax2", at::kFloat, {ceil_div(p.numel, kBlock)});
    } else {
      need(p.name + ".exp_avg", at::kFloat, p.shape);
      need(p.name + ".exp_avg_sq", at::kFloat, p.shape);
    }
  }
  I.queue->synchronize();
  auto flat = [](const at::Tensor& t) { return t.detach().cpu().contiguous().view({-1}); };
  for (size_t i = 0; i < I.params.size(); ++i) {
    const Impl::Param& p = I.params[i];
    I.scatter(i, F::P, flat(state.tensors.at(p.name + ".master")));
    if (p.is8bit) {
      I.scatter(i, F::M, flat(state.tensors.at(p.name + ".state1")));
      I.scatter(i, F::V, flat(state.tensors.at(p.name + ".state2")));
      I.scatter(i, F::AbsmaxM, flat(state.tensors.at(p.name + ".absmax1")));
      I.scatter(i, F::AbsmaxV, flat(state.tensors.at(p.name + ".absmax2")));
    } else {
      I.scatter(i, F::M, flat(state.tensors.at(p.name + ".exp_avg")));
      I.scatter(i, F::V, flat(state.tensors.at(p.name + ".exp_avg_sq")));
    }
  }
  step_ = j["step"].get<int64_t>();
  // The slots hold pages prefetched before the load: fetch them again.
  if (!I.streamed.empty()) {
    I.visit -= I.visit % static_cast<int64_t>(I.streamed.size());
    I.prefetch(I.visit, I.stream_slots);
  }
}

PagingStats AdamW::stats() const {
  impl_->stats.stall_seconds += impl_->queue->take_stall_seconds();
  return impl_->stats;
}

std::string AdamW::describe() const {
  const Impl& I = *impl_;
  int64_t n8 = 0, n32 = 0, e8 = 0, e32 = 0;
  for (const auto& p : I.params) {
    if (p.is8bit) {
      ++n8;
      e8 += p.numel;
    } else {
      ++n32;
      e32 += p.numel;
    }
  }
  std::ostringstream os;
  os << (I.opt.paging.enabled ? "paged " : "") << "AdamW over " << I.params.size() << " parameters (" << (e8 + e32)
     << " elements; ";
  if (n8) os << n8 << " with 8-bit state" << (n32 ? ", " : "");
  if (n32) os << n32 << " with fp32 state";
  os << "): " << I.pages.size() << " pages of " << fs::format_bytes(static_cast<uint64_t>(I.page_bytes)) << " on "
     << I.device;
  int64_t scaled = 0;
  double scale = 1.0;
  for (const auto& p : I.params)
    if (p.lr_scale != 1.0) {
      ++scaled;
      scale = p.lr_scale;
    }
  if (scaled) os << "; learning rate x" << scale << " for " << scaled << " of them";
  if (I.streamed.empty())
    os << ", all resident";
  else
    os << ", " << I.resident << " resident, " << I.streamed.size() << " streamed from the host through "
       << I.stream_slots << " slots";
  return os.str();
}

}  // namespace qlora::optim
