// qlora: fine-tune LLMs with QLoRA. Entry point: declares every subcommand and option (the only
// TU that includes CLI11), runs the chosen subcommand, and maps errors to exit codes:
// 0 ok, 2 bad input (UserError or a usage error), 1 internal failure, 3 not implemented.
#include <c10/util/Exception.h>
#include <torch/cuda.h>
#include <torch/version.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <functional>
#include <iostream>

#include "kernels/ops.h"
#include "trainer/cli/commands.h"
#include "trainer/common/error.h"
#include "trainer/common/memory.h"

namespace {

void print_version() {
  std::printf("qlora %s\n", QLORA_VERSION);
  std::printf("LibTorch %s\n", TORCH_VERSION);
  std::string archs = QLORA_CUDA_ARCHS;
  std::printf("CUDA architectures: %s\n", archs.empty() ? "none (built without CUDA)" : archs.c_str());
  std::printf("CPU kernels: %s\n", qlora::kernels::cpu_isa_name());
  int n = 0;
  try {
    n = torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
  } catch (const std::exception&) { n = 0; }
  if (n > 0)
    std::printf("GPU: %d visible\n", n);
  else
    std::printf("GPU: none visible\n");
}

// A usage error in the words of every other error: the option or argument, then what was
// expected. CLI11's own first line where no better wording is known.
std::string usage_message(const CLI::ParseError& err, const CLI::App& app, int argc, char** argv) {
  std::string what = qlora::first_line(err.what());
  while (!what.empty() && (what.back() == ' ' || what.back() == '.')) what.pop_back();
  const CLI::App* cmd = &app;  // the innermost subcommand given
  for (const CLI::App* sub = &app; sub;) {
    const auto subs = sub->get_subcommands();
    sub = subs.empty() ? nullptr : subs.front();
    if (sub) cmd = sub;
  }
  if (const std::string conv = "Could not convert: "; what.starts_with(conv)) {
    const size_t eq = what.find(" = ", conv.size());
    if (eq != std::string::npos) {
      const std::string name = what.substr(conv.size(), eq - conv.size()), value = what.substr(eq + 3);
      std::string type = "a value of another kind";
      if (const CLI::Option* o = cmd->get_option_no_throw(name)) {
        const std::string t = o->get_type_name();
        if (t == "INT") type = "an integer";
        if (t == "UINT") type = "a non-negative integer";
        if (t == "FLOAT") type = "a number";
      }
      return name + ": expected " + type + ", got \"" + value + "\"";
    }
  }
  if (dynamic_cast<const CLI::ExtrasError*>(&err)) {
    if (cmd == &app && argc > 1 && argv[1][0] != '-') {
      std::string names;
      for (const CLI::App* sub : app.get_subcommands({})) names += (names.empty() ? "" : ", ") + sub->get_name();
      return std::string(argv[1]) + ": unknown subcommand (expected one of " + names + ")";
    }
    const size_t colon = what.find(": ");
    const std::string extra = colon == std::string::npos ? what : what.substr(colon + 2);
    if (extra.starts_with("-")) return extra + ": unknown option";
    return extra + ": unexpected argument";
  }
  return what;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace qlora::cli;
  qlora::use_returning_heap();
  CLI::App app{"qlora: fine-tune open LLMs with QLoRA (NF4 base weights, LoRA adapters)", "qlora"};
  app.require_subcommand(0, 1);
  bool version = false;
  app.add_flag("--version", version, "Print versions, compiled CUDA architectures and GPU visibility");
  std::function<int()> action;

  // train
  TrainArgs train;
  auto* t = app.add_subcommand("train", "Fine-tune from a YAML config (QLoRA or LoRA)");
  t->add_option("config", train.config, "Config file (YAML)")->required();
  t->add_option("--set", train.set, "Override a config key: --set key=value (repeatable)");
  t->add_option("--resume", train.resume_path, "Resume from the newest complete checkpoint of the run, or from PATH")
      ->expected(0, 1);
  t->add_flag("--allow-config-change", train.allow_config_change,
              "Resume even if the config differs from the checkpoint's");
  t->add_option("--nproc-per-node", train.nproc_per_node,
                "Data-parallel: start this many worker processes on this machine (docs/distributed.md)")
      ->group("Distributed");
  t->add_option("--nnodes", train.nnodes, "Data-parallel: number of machines (default 1)")->group("Distributed");
  t->add_option("--node-rank", train.node_rank, "Data-parallel: this machine's index, 0 to nnodes-1")
      ->group("Distributed");
  t->add_option("--master-addr", train.master_addr, "Data-parallel: address of node 0, which hosts the store")
      ->group("Distributed");
  t->add_option("--master-port", train.master_port, "Data-parallel: port of the store on node 0 (default: a free one)")
      ->group("Distributed");
  // Fault injection for the tests; an empty group keeps them out of --help.
  t->add_option("--test-nonfinite-steps", train.test_nonfinite_steps,
                "Make the gradients of these steps NaN (comma-separated)")
      ->delimiter(',')
      ->group("");
  t->add_option("--test-stop-after-step", train.test_stop_after_step, "Stop after this step as a stop signal would")
      ->group("");
  t->add_option("--test-memory-budget", train.test_memory_budget, "Check memory against this many bytes")->group("");
  t->callback([&] {
    train.resume = t->count("--resume") > 0;
    train.launcher = t->count("--nproc-per-node") + t->count("--nnodes") + t->count("--node-rank") +
                         t->count("--master-addr") + t->count("--master-port") >
                     0;
    train.argv.assign(argv + 1, argv + argc);
    action = [&] { return run_train(train); };
  });

  // export
  ExportArgs exp;
  auto* e = app.add_subcommand("export", "Export a checkpoint: PEFT adapter, merged HF model, GGUF adapter");
  e->add_option("checkpoint", exp.checkpoint,
                "Checkpoint directory, run directory (its newest intact checkpoint) or PEFT adapter directory")
      ->required();
  e->add_option(
       "--format", exp.format,
       "peft: adapter_config.json + adapter_model.safetensors (PEFT); merged: a full HF model with "
       "the adapter merged in; gguf-adapter: adapter_model.gguf for llama.cpp --lora; gguf: the merged model as "
       "one llama.cpp GGUF file (--out NAME.gguf)")
      ->check(CLI::IsMember({"peft", "merged", "gguf-adapter", "gguf"}))
      ->default_str("peft");
  e->add_option("--out", exp.out,
                "Output directory, or the .gguf file for --format gguf (built beside it, renamed into place when "
                "complete)")
      ->required();
  e->add_option("--base-model", exp.base_model, "Base model directory (default: the one the run used)");
  e->add_option("--merge-into", exp.merge_into,
                "merged: dequant = the NF4-dequantized weights the adapter was trained against (default); "
                "original = the 16-bit weights (usually worse after QLoRA)")
      ->check(CLI::IsMember({"dequant", "original"}))
      ->default_str("dequant");
  e->add_option("--dtype", exp.dtype,
                "Tensor dtype written: bf16 | fp16 | fp32 (default: fp32 for peft, bf16 for merged, fp16 for "
                "gguf-adapter)")
      ->check(CLI::IsMember({"bf16", "fp16", "fp32"}));
  e->add_option("--outtype", exp.outtype,
                "gguf: type of the 2-D weights, as llama.cpp's converter names it: f16 (default) | bf16 | q8_0 | f32 "
                "(1-D tensors are F32)");
  e->add_option("--max-shard-size", exp.max_shard_size,
                "merged: largest safetensors shard, e.g. 5GB (10^9 bytes), 500MB, 2GiB")
      ->default_str("5GB");
  e->add_flag("--force", exp.force,
              "Replace a non-empty output directory or an existing .gguf file (only once the new one is complete)");
  e->footer(
      "Examples:\n"
      "  qlora export runs/demo --format peft --out out/demo-peft\n"
      "  qlora export runs/demo/checkpoints/checkpoint-000150 --format merged --dtype bf16 --out out/demo-merged\n"
      "  qlora export runs/demo --format gguf-adapter --out out/demo-gguf\n"
      "  qlora export runs/demo --format gguf --outtype q8_0 --out out/demo-q8_0.gguf\n"
      "merged computes W + scaling * B @ A in fp32 and streams tensor by tensor (memory holds one "
      "tensor, not the model); see docs/export.md.");
  e->callback([&] { action = [&] { return run_export(exp); }; });

  // quantize
  QuantizeArgs q;
  auto* qc = app.add_subcommand("quantize", "Write an HF bnb-4bit (NF4) checkpoint from an HF model");
  qc->add_option("--model", q.model, "HF model directory (config.json + safetensors)")->required();
  qc->add_option("--out", q.out, "Output directory")->required();
  qc->add_option("--blocksize", q.blocksize, "NF4 block size (power of two, 32..4096)");
  qc->add_option("--double-quant", q.double_quant, "Double-quantize the statistics (true|false)");
  qc->add_option("--compute-dtype", q.compute_dtype, "bnb_4bit_compute_dtype written to config.json");
  qc->add_flag("--force", q.force, "Write into a non-empty output directory");
  qc->callback([&] { action = [&] { return run_quantize(q); }; });

  // generate
  GenerateArgs g;
  auto* gc =
      app.add_subcommand("generate", "Generate text with a model (and optionally an adapter), streamed to stdout");
  gc->add_option("--model", g.model, "HF model directory (default: the base the adapter names)");
  gc->add_option("--adapter", g.adapter, "Checkpoint, run directory (its latest checkpoint) or PEFT adapter directory");
  gc->add_option("--prompt", g.prompt, "Prompt text (with --chat: one user message)");
  gc->add_flag("--chat", g.chat,
               "Chat with the model's chat template; without --prompt, one user message per stdin line");
  gc->add_option("--max-new-tokens", g.max_new_tokens, "Most tokens to generate (stops earlier at EOS)");
  gc->add_option("--temperature", g.temperature, "Sampling temperature (0 = greedy)");
  gc->add_option("--top-k", g.top_k, "Top-k sampling (0 = off)");
  gc->add_option("--top-p", g.top_p, "Top-p (nucleus) sampling (1 = off)");
  gc->add_option("--seed", g.seed, "Sampling seed");
  gc->add_option("--device", g.device, "auto | cpu | cuda | cuda:N");
  gc->add_flag("--load-in-4bit", g.load_in_4bit, "Quantize the base to NF4 (default without an adapter: 16-bit)");
  gc->add_flag("--ignore-eos", g.ignore_eos, "Do not stop at EOS: always generate --max-new-tokens (benchmarks)");
  gc->callback([&] { action = [&] { return run_generate(g); }; });

  // eval
  EvalArgs ev;
  auto* ec = app.add_subcommand("eval", "Loss and perplexity of a model (and adapter) on a dataset");
  ec->add_option("--model", ev.model, "HF model directory (default: the base the adapter names)");
  ec->add_option("--adapter", ev.adapter,
                 "Checkpoint, run directory (its latest checkpoint) or PEFT adapter directory");
  ec->add_option("--data", ev.data, "Dataset file (JSONL or JSON)")->required();
  ec->add_option("--type", ev.type, "Dataset type: text | alpaca | chat | prompt_completion");
  ec->add_option("--sequence-len", ev.sequence_len, "Tokens per sequence (longer samples are truncated)");
  ec->add_option("--batch-size", ev.batch_size, "Sequences per batch");
  ec->add_option("--device", ev.device, "auto | cpu | cuda | cuda:N");
  ec->add_flag("--load-in-4bit", ev.load_in_4bit, "Quantize the base to NF4 (default without an adapter: 16-bit)");
  ec->add_flag("--json", ev.json, "Print the result as JSON");
  ec->callback([&] { action = [&] { return run_eval(ev); }; });

  // plan
  PlanArgs plan;
  auto* pl = app.add_subcommand("plan", "Predict a run's peak memory (broken down) and step time before running it");
  pl->add_option("config", plan.config, "Config file (YAML)")->required();
  pl->add_option("--set", plan.set, "Override a config key: --set key=value (repeatable)");
  pl->add_option("--device", plan.device, "Plan for this device: cpu, cuda, cuda:N (default: the config's)");
  pl->add_option("--memory", plan.memory, "Check against this budget, e.g. 24GB (default: what the device has free)");
  pl->add_flag("--no-time", plan.no_time, "Skip the step-time calibration");
  pl->add_flag("--no-data", plan.no_data, "Do not read the data: count every row as sequence_len tokens");
  pl->add_flag("--json", plan.json, "Print JSON");
  pl->callback([&] { action = [&] { return run_plan(plan); }; });

  // inspect
  InspectArgs in;
  auto* ic = app.add_subcommand("inspect", "Print a model's architecture, shapes, parameters and NF4 memory");
  ic->add_option("model", in.model, "HF model directory")->required();
  ic->add_flag("--json", in.json, "Print JSON");
  ic->callback([&] { action = [&] { return run_inspect(in); }; });

  // preprocess
  PreprocessArgs pp;
  auto* pc = app.add_subcommand(
      "preprocess", "Tokenize and pack a config's datasets as training would, and report what the model learns from");
  pc->add_option("config", pp.config, "Config file (YAML)")->required();
  pc->add_option("--set", pp.set, "Override a config key: --set key=value (repeatable)");
  pc->add_option("--show", pp.show,
                 "Print the first N samples of the training order, supervised tokens marked (colour on a terminal, "
                 "else [[...]])");
  pc->add_flag("--ids", pp.ids, "With --show: also the token ids, supervised as N, masked as (N)");
  pc->add_flag("--json", pp.json, "Print one JSON object (statistics, and the --show samples with their ids)");
  pc->callback([&] { action = [&] { return run_preprocess(pp); }; });

  // init
  InitArgs ia;
  auto* ia_c = app.add_subcommand("init", "Write a commented training config for a model (and a dataset)");
  ia_c->add_option("model", ia.model, "HF model directory (config.json, tokenizer) or GGUF file")->required();
  ia_c->add_option("--data", ia.data,
                   "Dataset file (JSONL or JSON): its format and token lengths set the dataset type and sequence_len");
  ia_c->add_option("--out", ia.out, "Config file to write")->default_str("qlora.yaml");
  ia_c->add_flag("--force", ia.force, "Replace an existing file");
  ia_c->callback([&] { action = [&] { return run_init(ia); }; });

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& err) { return app.exit(err); } catch (const CLI::CallForAllHelp& err) {
    return app.exit(err);
  } catch (const CLI::ParseError& err) {
    if (err.get_exit_code() == 0) return app.exit(err);
    // A usage error: one line, like every other error, pointing at the subcommand's help.
    std::string help = "qlora";
    for (const CLI::App* sub : app.get_subcommands()) help += " " + sub->get_name();
    const std::string what = usage_message(err, app, argc, argv);
    std::fprintf(stderr, "qlora: error: %s; run '%s --help'\n", what.c_str(), help.c_str());
    return 2;
  }

  if (version) {
    print_version();
    return 0;
  }
  if (!action) {
    std::cout << app.help();
    return 2;
  }
  try {
    return action();
  } catch (const qlora::UserError& err) {
    std::fprintf(stderr, "qlora: error: %s\n", err.what());
    return 2;
  } catch (const c10::Error& err) {
    std::fprintf(stderr, "qlora: internal error: %s\n", qlora::first_line(err.what_without_backtrace()).c_str());
    return 1;
  } catch (const std::exception& err) {
    std::fprintf(stderr, "qlora: internal error: %s\n", err.what());
    return 1;
  }
}
