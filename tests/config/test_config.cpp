// trainer/config: YAML -> TrainConfig, every validation rule with its exact message, --set
// overrides, the resolved YAML round trip and the resume diff.
#include <gtest/gtest.h>

#include <filesystem>

#include "tests/common/harness.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/config/load.h"

using namespace qlora;
using config::TrainConfig;
namespace stdfs = std::filesystem;

namespace {

const char* kMinimal = R"(base_model: models/tiny
datasets:
  - path: data/train.jsonl
    type: alpaca
lora_target_modules: [q_proj, v_proj]
max_steps: 10
)";

TrainConfig parse(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return config::parse_config(yaml, "configs/x.yaml", overrides);
}

// The UserError message for a config (fails the test when it parses).
std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    parse(yaml, overrides);
  } catch (const UserError& e) { return e.what(); } catch (const std::exception& e) {
    return std::string("not a UserError: ") + e.what();
  }
  return "(no error)";
}

std::string abs_path(const std::string& p) { return stdfs::absolute(p).lexically_normal().string(); }

}  // namespace

TEST(Config, MinimalDefaults) {
  TrainConfig c = parse(kMinimal);
  EXPECT_EQ(c.config_path, "configs/x.yaml");
  EXPECT_EQ(c.base_model, abs_path("models/tiny"));
  EXPECT_EQ(c.tokenizer, c.base_model) << "tokenizer defaults to base_model";
  ASSERT_EQ(c.data.datasets.size(), 1u);
  EXPECT_EQ(c.data.datasets[0].path, abs_path("data/train.jsonl"));
  EXPECT_EQ(c.data.datasets[0].type, "alpaca");
  EXPECT_EQ(c.lora.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(c.max_steps, 10);
  EXPECT_FALSE(c.num_epochs);
  EXPECT_EQ(c.output_dir, abs_path("runs/out"));
  EXPECT_EQ(c.dataset_prepared_path, "") << "no prepared-data cache unless set";
  // untouched defaults stay the struct's
  const TrainConfig d;
  EXPECT_EQ(c.lora.adapter, d.lora.adapter);
  EXPECT_EQ(c.lora.r, d.lora.r);
  EXPECT_EQ(c.optim.learning_rate, d.optim.learning_rate);
  EXPECT_EQ(c.quantization.blocksize, d.quantization.blocksize);
  EXPECT_EQ(c.data.seed, c.seed);
}

TEST(Config, EveryKey) {
  const std::string yaml = R"(base_model: /m/llama
tokenizer_config: /m/tok
adapter: qlora
load_in_4bit: true
quantization:
  quant_type: NF4
  double_quant: false
  blocksize: 128
  compute_dtype: bfloat16
lora_r: 16
lora_alpha: 32
lora_dropout: 0.1
lora_target_modules: q_proj
lora_target_linear: true
use_rslora: yes
sequence_len: 512
sample_packing: true
train_on_inputs: true
skip_invalid: true
chat_template: chatml
datasets:
  - path: /d/a.jsonl
    type: chat_template
    field_messages: conversations
    message_field_role: from
    message_field_content: value
  - path: /d/b.jsonl
    type: completion
    field: body
    split: validation
    ds_type: json
test_datasets:
  - path: /d/val.jsonl
    type: input_output
    field_prompt: q
    field_completion: a
micro_batch_size: 4
gradient_accumulation_steps: 8
num_epochs: 3
optimizer: paged_adamw_8bit
optimizer_device_budget: 512MB
learning_rate: 1e-4
lr_scheduler: constant_with_warmup
warmup_ratio: 0.05
weight_decay: 0.01
max_grad_norm: 0.3
adam_beta1: 0.8
adam_beta2: 0.95
adam_epsilon: 1e-6
gradient_checkpointing: true
seed: 7
device: CUDA:1
max_nonfinite_steps: 3
output_dir: /r/out
save_steps: 100
save_total_limit: 2
eval_steps: 50
logging_steps: 5
)";
  TrainConfig c = parse(yaml);
  EXPECT_EQ(c.base_model, "/m/llama");
  EXPECT_EQ(c.tokenizer, "/m/tok");
  EXPECT_EQ(c.lora.adapter, "qlora");
  EXPECT_EQ(c.quantization.quant_type, "nf4");
  EXPECT_FALSE(c.quantization.double_quant);
  EXPECT_EQ(c.quantization.blocksize, 128);
  EXPECT_EQ(c.quantization.compute_dtype, "bf16");
  EXPECT_EQ(c.lora.r, 16);
  EXPECT_EQ(c.lora.alpha, 32.0);
  EXPECT_EQ(c.lora.dropout, 0.1);
  EXPECT_EQ(c.lora.target_modules, (std::vector<std::string>{"q_proj"}));
  EXPECT_TRUE(c.lora.target_linear);
  EXPECT_TRUE(c.lora.use_rslora);
  EXPECT_EQ(c.data.sequence_len, 512);
  EXPECT_TRUE(c.data.sample_packing);
  EXPECT_TRUE(c.data.train_on_inputs);
  EXPECT_TRUE(c.data.skip_invalid);
  EXPECT_EQ(c.data.chat_template, "chatml");
  ASSERT_EQ(c.data.datasets.size(), 2u);
  EXPECT_EQ(c.data.datasets[0].type, "chat");
  EXPECT_EQ(c.data.datasets[0].field_messages, "conversations");
  EXPECT_EQ(c.data.datasets[0].message_field_role, "from");
  EXPECT_EQ(c.data.datasets[0].message_field_content, "value");
  EXPECT_EQ(c.data.datasets[1].type, "text");
  EXPECT_EQ(c.data.datasets[1].field, "body");
  EXPECT_EQ(c.data.datasets[1].split, "validation");
  EXPECT_EQ(c.data.datasets[1].ds_type, "json");
  EXPECT_EQ(c.data.datasets[0].split, "train");
  EXPECT_EQ(c.data.datasets[0].ds_type, "");
  ASSERT_EQ(c.data.test_datasets.size(), 1u);
  EXPECT_EQ(c.data.test_datasets[0].type, "prompt_completion");
  EXPECT_EQ(c.data.test_datasets[0].field_prompt, "q");
  EXPECT_EQ(c.data.test_datasets[0].field_completion, "a");
  EXPECT_EQ(c.micro_batch_size, 4);
  EXPECT_EQ(c.gradient_accumulation_steps, 8);
  EXPECT_EQ(c.num_epochs, 3);
  EXPECT_EQ(c.optim.optimizer, "adamw_8bit");
  EXPECT_TRUE(c.optim.paged);
  EXPECT_EQ(c.optim.device_budget, "512MB");
  EXPECT_EQ(c.optim.learning_rate, 1e-4);
  EXPECT_EQ(c.optim.lr_scheduler, "constant");
  EXPECT_EQ(c.optim.warmup_ratio, 0.05);
  EXPECT_EQ(c.optim.weight_decay, 0.01);
  EXPECT_EQ(c.optim.max_grad_norm, 0.3);
  EXPECT_EQ(c.optim.adam_beta1, 0.8);
  EXPECT_EQ(c.optim.adam_beta2, 0.95);
  EXPECT_EQ(c.optim.adam_epsilon, 1e-6);
  EXPECT_TRUE(c.gradient_checkpointing);
  EXPECT_EQ(c.seed, 7u);
  EXPECT_EQ(c.data.seed, 7u);
  EXPECT_EQ(c.device, "cuda:1");
  EXPECT_EQ(c.max_nonfinite_steps, 3);
  EXPECT_EQ(c.output_dir, "/r/out");
  EXPECT_EQ(c.save_steps, 100);
  EXPECT_EQ(c.save_total_limit, 2);
  EXPECT_EQ(c.eval_steps, 50);
  EXPECT_EQ(c.logging_steps, 5);
}

TEST(Config, HfAndBitsandbytesSpellings) {
  TrainConfig c = parse(std::string(kMinimal) + R"(bnb_4bit_quant_type: nf4
bnb_4bit_use_double_quant: false
bnb_4bit_compute_dtype: float16
optimizer: adamw_bnb_8bit
)");
  EXPECT_FALSE(c.quantization.double_quant);
  EXPECT_EQ(c.quantization.compute_dtype, "fp16");
  EXPECT_EQ(c.optim.optimizer, "adamw_8bit");
  EXPECT_FALSE(c.optim.paged);
  c = parse(std::string(kMinimal) + "optimizer: paged_adamw_32bit\nquantization:\n  bnb_4bit_blocksize: 256\n");
  EXPECT_EQ(c.optim.optimizer, "adamw");
  EXPECT_TRUE(c.optim.paged);
  EXPECT_EQ(c.quantization.blocksize, 256);
  c = parse(std::string(kMinimal) + "load_in_4bit: false\n");
  EXPECT_EQ(c.lora.adapter, "lora") << "load_in_4bit decides when adapter is not given";
  c = parse(std::string(kMinimal) + "warmup_ratio: null\nlora_r:\n");
  EXPECT_FALSE(c.optim.warmup_ratio);
  EXPECT_EQ(c.lora.r, TrainConfig{}.lora.r) << "null takes the default";
}

// Wrong types and out-of-range values: file:line: key: expected ..., got ...
// gradient_checkpointing: offload (Axolotl's spelling) is checkpointing with the block inputs in
// host memory; it survives the resolved-YAML round trip and --set.
TEST(Config, GradientCheckpointingOffload) {
  const std::string m = kMinimal;
  const TrainConfig off = parse(m + "gradient_checkpointing: offload\n");
  EXPECT_TRUE(off.gradient_checkpointing);
  EXPECT_TRUE(off.activation_offload);
  const TrainConfig on = parse(m + "gradient_checkpointing: true\n");
  EXPECT_TRUE(on.gradient_checkpointing);
  EXPECT_FALSE(on.activation_offload);
  EXPECT_FALSE(parse(m).gradient_checkpointing);
  EXPECT_NE(config::to_yaml(off).find("gradient_checkpointing: offload\n"), std::string::npos);
  const TrainConfig back = parse(config::to_yaml(off));
  EXPECT_TRUE(back.activation_offload);
  const TrainConfig set = parse(m + "gradient_checkpointing: offload\n", {"gradient_checkpointing=false"});
  EXPECT_FALSE(set.gradient_checkpointing);
  EXPECT_FALSE(set.activation_offload);
}

TEST(Config, TypeAndRangeErrors) {
  const std::string m = kMinimal;  // 6 lines: the key under test is on line 7
  EXPECT_EQ(error_of(m + "lora_r: abc\n"), "configs/x.yaml:7: lora_r: expected a positive integer, got \"abc\"");
  EXPECT_EQ(error_of(m + "lora_r: -3\n"), "configs/x.yaml:7: lora_r: expected a positive integer, got -3");
  EXPECT_EQ(error_of(m + "lora_r: 0\n"), "configs/x.yaml:7: lora_r: expected a positive integer, got 0");
  EXPECT_EQ(error_of(m + "lora_r: 1.5\n"), "configs/x.yaml:7: lora_r: expected a positive integer, got 1.5");
  EXPECT_EQ(error_of(m + "save_steps: -1\n"), "configs/x.yaml:7: save_steps: expected a non-negative integer, got -1");
  EXPECT_EQ(error_of(m + "learning_rate: [1]\n"),
            "configs/x.yaml:7: learning_rate: expected a positive number, got a list");
  EXPECT_EQ(error_of(m + "learning_rate: 0\n"), "configs/x.yaml:7: learning_rate: expected a positive number, got 0");
  EXPECT_EQ(error_of(m + "learning_rate: fast\n"),
            "configs/x.yaml:7: learning_rate: expected a positive number, got \"fast\"");
  EXPECT_EQ(error_of(m + "lora_dropout: 1\n"), "configs/x.yaml:7: lora_dropout: expected a number in [0, 1), got 1");
  EXPECT_EQ(error_of(m + "warmup_ratio: -0.1\n"),
            "configs/x.yaml:7: warmup_ratio: expected a fraction in [0, 1), got -0.1");
  EXPECT_EQ(error_of(m + "adam_beta2: .nan\n"),
            "configs/x.yaml:7: adam_beta2: expected a number in [0, 1), got \".nan\"");
  EXPECT_EQ(error_of(m + "sample_packing: maybe\n"),
            "configs/x.yaml:7: sample_packing: expected true or false, got \"maybe\"");
  EXPECT_EQ(error_of(m + "sample_packing: {a: 1}\n"),
            "configs/x.yaml:7: sample_packing: expected true or false, got a mapping");
  EXPECT_EQ(error_of(m + "base_model: [a, b]\n"), "configs/x.yaml:7: base_model: given twice")
      << "a repeated key is reported before its value";
  EXPECT_EQ(error_of(m + "quantization:\n  blocksize: 100\n"),
            "configs/x.yaml:8: quantization.blocksize: expected a power of two in 32..4096, got 100");
  EXPECT_EQ(
      error_of(m + "quantization: 4\n"),
      "configs/x.yaml:7: quantization: expected a mapping (quant_type, double_quant, blocksize, compute_dtype), got 4");
  EXPECT_EQ(error_of(m + "quantization:\n  quant_type: fp4\n"),
            "configs/x.yaml:8: quantization.quant_type: expected one of nf4, got \"fp4\" (did you mean \"nf4\"?)");
  EXPECT_EQ(error_of(m + "lr_scheduler: cosin\n"),
            "configs/x.yaml:7: lr_scheduler: expected one of cosine, linear, constant, got \"cosin\" (did you mean "
            "\"cosine\"?)");
  EXPECT_EQ(
      error_of(m + "optimizer: sgd\n"),
      "configs/x.yaml:7: optimizer: expected one of adamw, adamw_8bit, paged_adamw, paged_adamw_8bit, got \"sgd\"");
  EXPECT_EQ(error_of(m + "device: tpu\n"), "configs/x.yaml:7: device: expected auto, cpu, cuda or cuda:N, got \"tpu\"");
  EXPECT_EQ(error_of(m + "optimizer_device_budget: lots\n"),
            "configs/x.yaml:7: optimizer_device_budget: expected auto or a size like 512MB or 2GiB, got \"lots\"");
  EXPECT_EQ(error_of(m + "gradient_checkpointing: maybe\n"),
            "configs/x.yaml:7: gradient_checkpointing: expected true, false or offload, got \"maybe\"");
  EXPECT_EQ(error_of(m + "lora_target_linear: 1\n"),
            "configs/x.yaml:7: lora_target_linear: expected true or false, got 1");
  EXPECT_EQ(error_of("base_model: m\nlora_target_modules: [a, [b]]\n"),
            "configs/x.yaml:2: lora_target_modules.1: expected a name, got a list");
}

TEST(Config, DatasetErrors) {
  const std::string head = "base_model: m\nlora_target_modules: [q_proj]\nmax_steps: 1\n";
  EXPECT_EQ(error_of(head + "datasets:\n  - path: a.jsonl\n    type: alpca\n"),
            "configs/x.yaml:6: datasets.0.type: expected one of text, alpaca, chat, prompt_completion, got \"alpca\" "
            "(did you mean \"alpaca\"?)");
  EXPECT_EQ(error_of(head + "datasets:\n  - path: a.jsonl\n  - type: text\n"),
            "configs/x.yaml:6: datasets.1.path: required: the data file or directory (.jsonl, .json, .parquet, .arrow, "
            ".csv, ...)");
  EXPECT_EQ(error_of(head + "datasets:\n  - path: d\n    ds_type: jsonl\n"),
            "configs/x.yaml:6: datasets.0.ds_type: expected one of json, parquet, arrow, csv, got \"jsonl\" (did you "
            "mean \"json\"?)");
  EXPECT_EQ(error_of(head + "datasets:\n  - path: a.jsonl\n    feild: x\n"),
            "configs/x.yaml:6: unknown key \"datasets.0.feild\" (did you mean \"datasets.0.field\"?)");
  EXPECT_EQ(error_of(head + "datasets: a.jsonl\n"),
            "configs/x.yaml:4: datasets: expected a list of datasets (- path: ..., type: ...), got \"a.jsonl\"");
  EXPECT_EQ(error_of(head + "datasets:\n  - a.jsonl\n"),
            "configs/x.yaml:5: datasets.0: expected a mapping with path and type, got \"a.jsonl\"");
  EXPECT_EQ(error_of(head + "datasets: []\n"),
            "configs/x.yaml:4: datasets: required: a list of training files (- path: ..., type: ...)");
}

TEST(Config, UnknownKeysSuggest) {
  const std::string m = kMinimal;
  EXPECT_EQ(error_of(m + "lora_rank: 8\n"), "configs/x.yaml:7: unknown key \"lora_rank\" (did you mean \"lora_r\"?)");
  EXPECT_EQ(error_of(m + "learning_rte: 1e-4\n"),
            "configs/x.yaml:7: unknown key \"learning_rte\" (did you mean \"learning_rate\"?)");
  EXPECT_EQ(
      error_of(m + "gradient_acumulation_steps: 2\n"),
      "configs/x.yaml:7: unknown key \"gradient_acumulation_steps\" (did you mean \"gradient_accumulation_steps\"?)");
  EXPECT_EQ(error_of(m + "num_epoch: 2\n"),
            "configs/x.yaml:7: unknown key \"num_epoch\" (did you mean \"num_epochs\"?)");
  EXPECT_EQ(error_of(m + "quantization:\n  block_size: 64\n"),
            "configs/x.yaml:8: unknown key \"quantization.block_size\" (did you mean \"quantization.blocksize\"?)");
  EXPECT_EQ(error_of(m + "zzzzqqqq: 1\n"), "configs/x.yaml:7: unknown key \"zzzzqqqq\"");
}

TEST(Config, RepeatedAndAliasedKeys) {
  const std::string m = kMinimal;
  EXPECT_EQ(error_of(m + "lora_r: 8\nlora_r: 16\n"), "configs/x.yaml:8: lora_r: given twice");
  EXPECT_EQ(error_of(m + "tokenizer: a\ntokenizer_config: b\n"),
            "configs/x.yaml:8: tokenizer_config: already set as \"tokenizer\"");
  EXPECT_EQ(error_of(m + "quantization:\n  quant_type: nf4\nbnb_4bit_quant_type: nf4\n"),
            "configs/x.yaml:9: bnb_4bit_quant_type: already set as \"quantization.quant_type\"");
}

TEST(Config, CrossKeyChecks) {
  const std::string m = kMinimal;
  EXPECT_EQ(error_of(m + "num_epochs: 2\n"),
            "configs/x.yaml:6: max_steps: set either num_epochs or max_steps, not both");
  EXPECT_EQ(error_of("base_model: m\nlora_target_modules: [q]\ndatasets:\n  - path: a\n"),
            "configs/x.yaml: num_epochs: required: set num_epochs or max_steps");
  EXPECT_EQ(error_of(m + "warmup_steps: 10\nwarmup_ratio: 0.1\n"),
            "configs/x.yaml:8: warmup_ratio: set either warmup_steps or warmup_ratio, not both");
  EXPECT_NO_THROW(parse(m + "warmup_steps: 0\nwarmup_ratio: 0.1\n")) << "warmup_steps 0 is the default";
  EXPECT_EQ(error_of("base_model: m\nmax_steps: 1\ndatasets:\n  - path: a\n"),
            "configs/x.yaml: lora_target_modules: required: the modules to adapt (e.g. [q_proj, v_proj]), or "
            "lora_target_linear: true");
  EXPECT_NO_THROW(parse("base_model: m\nmax_steps: 1\nlora_target_linear: true\ndatasets:\n  - path: a\n"));
  EXPECT_EQ(error_of(m + "adapter: lora\nload_in_4bit: true\n"),
            "configs/x.yaml:8: load_in_4bit: true contradicts adapter: lora (use adapter: qlora for a 4-bit base)");
  EXPECT_EQ(error_of(m + "adapter: qlora\nload_in_4bit: false\n"),
            "configs/x.yaml:8: load_in_4bit: false contradicts adapter: qlora (qlora loads the base in 4 bit)");
  EXPECT_EQ(error_of(m + "val_set_size: 0.1\ntest_datasets:\n  - path: v\n"),
            "configs/x.yaml:7: val_set_size: set either val_set_size or test_datasets, not both");
  EXPECT_EQ(error_of(m + "eval_steps: 10\n"),
            "configs/x.yaml:7: eval_steps: needs validation data: set val_set_size or test_datasets");
  EXPECT_NO_THROW(parse(m + "eval_steps: 10\nval_set_size: 0.05\n"));
  EXPECT_EQ(error_of("datasets:\n  - path: a\nlora_target_linear: true\nmax_steps: 1\n"),
            "configs/x.yaml: base_model: required: the base model's directory (a Hugging Face checkpoint)");
}

TEST(Config, YamlStructureErrors) {
  EXPECT_EQ(error_of("base_model: [a, b\nlora_r: 3\n"),
            "configs/x.yaml:2: invalid YAML: end of sequence flow not found");
  EXPECT_EQ(error_of("- a\n- b\n"), "configs/x.yaml: expected a mapping of config keys (key: value lines), got a list");
  EXPECT_EQ(error_of(""),
            "configs/x.yaml: base_model: required: the base model's directory (a Hugging Face checkpoint)");
  EXPECT_EQ(error_of("[a]: 1\n"), "configs/x.yaml:1: config: expected key names, got a list as a key");
}

TEST(Config, SetOverrides) {
  TrainConfig c = parse(kMinimal, {"lora_r=16", "quantization.blocksize=128", "datasets.0.path=other.jsonl",
                                   "lora_target_modules=[a, b, c]", "learning_rate=3e-5", "datasets.1.path=more.jsonl",
                                   "datasets.1.type=text"});
  EXPECT_EQ(c.lora.r, 16);
  EXPECT_EQ(c.quantization.blocksize, 128);
  ASSERT_EQ(c.data.datasets.size(), 2u);
  EXPECT_EQ(c.data.datasets[0].path, abs_path("other.jsonl"));
  EXPECT_EQ(c.data.datasets[0].type, "alpaca") << "the rest of the entry stays";
  EXPECT_EQ(c.data.datasets[1].path, abs_path("more.jsonl"));
  EXPECT_EQ(c.data.datasets[1].type, "text");
  EXPECT_EQ(c.lora.target_modules, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(c.optim.learning_rate, 3e-5);
  // an override replaces every spelling of the key
  c = parse(std::string(kMinimal) + "tokenizer_config: /t1\nbnb_4bit_compute_dtype: fp16\n",
            {"tokenizer=/t2", "quantization.compute_dtype=fp32"});
  EXPECT_EQ(c.tokenizer, "/t2");
  EXPECT_EQ(c.quantization.compute_dtype, "fp32");
  c = parse(std::string(kMinimal) + "quantization:\n  blocksize: 256\n", {"bnb_4bit_blocksize=512"});
  EXPECT_EQ(c.quantization.blocksize, 512);
  // switching from max_steps to num_epochs: null clears the file's key
  c = parse(kMinimal, {"max_steps=null", "num_epochs=2"});
  EXPECT_FALSE(c.max_steps);
  EXPECT_EQ(c.num_epochs, 2);
  c = parse(kMinimal, {"quantization={blocksize: 32, double_quant: false}"});
  EXPECT_EQ(c.quantization.blocksize, 32);
  EXPECT_FALSE(c.quantization.double_quant);
  c = parse(kMinimal, {"datasets=[{path: x.json, type: chat}]"});
  ASSERT_EQ(c.data.datasets.size(), 1u);
  EXPECT_EQ(c.data.datasets[0].type, "chat");
}

TEST(Config, SetOverrideErrors) {
  EXPECT_EQ(error_of(kMinimal, {"lora_r=abc"}), "--set lora_r=abc: lora_r: expected a positive integer, got \"abc\"");
  EXPECT_EQ(error_of(kMinimal, {"quantization.blocksize=100"}),
            "--set quantization.blocksize=100: quantization.blocksize: expected a power of two in 32..4096, got 100");
  EXPECT_EQ(error_of(kMinimal, {"lora_rank=8"}),
            "--set lora_rank=8: unknown key \"lora_rank\" (did you mean \"lora_r\"?)");
  EXPECT_EQ(error_of(kMinimal, {"quantization.blocksiz=8"}),
            "--set quantization.blocksiz=8: unknown key \"quantization.blocksiz\" (did you mean "
            "\"quantization.blocksize\"?)");
  EXPECT_EQ(error_of(kMinimal, {"datasets.0.pth=x"}),
            "--set datasets.0.pth=x: unknown key \"datasets.0.pth\" (did you mean \"datasets.0.path\"?)");
  EXPECT_EQ(error_of(kMinimal, {"datasets.5.path=x"}),
            "--set datasets.5.path=x: datasets.5: index out of range (datasets has 1 entry)");
  EXPECT_EQ(error_of(kMinimal, {"datasets.first.path=x"}),
            "--set datasets.first.path=x: datasets.first: expected a list index (datasets.0.path)");
  EXPECT_EQ(error_of(kMinimal, {"lora_r"}), "--set lora_r: expected key=value, e.g. --set lora_r=16");
  EXPECT_EQ(error_of(kMinimal, {"lora_r.x=1"}), "--set lora_r.x=1: lora_r has no sub-keys");
  EXPECT_EQ(error_of(kMinimal, {"lora_r=[1"}),
            "--set lora_r=[1: lora_r: the value is not valid YAML (end of sequence flow not found)");
  EXPECT_EQ(error_of(kMinimal, {"datasets.0.type=alpca"}),
            "--set datasets.0.type=alpca: datasets.0.type: expected one of text, alpaca, chat, prompt_completion, got "
            "\"alpca\" (did you mean \"alpaca\"?)");
  EXPECT_EQ(error_of(kMinimal, {"num_epochs=3"}),
            "configs/x.yaml:6: max_steps: set either num_epochs or max_steps, not both");
  EXPECT_EQ(error_of(kMinimal, {"datasets=[{type: chat}]"}),
            "--set datasets=[{type: chat}]: datasets.0.path: required: the data file or directory (.jsonl, .json, "
            ".parquet, .arrow, .csv, ...)");
}

// Axolotl's overrides_of_model_config (and its older name model_config): the router's
// load-balancing loss of a mixture of experts.
TEST(Config, ModelConfigOverrides) {
  TrainConfig c = parse(kMinimal);
  EXPECT_FALSE(c.model_overrides.output_router_logits);
  EXPECT_FALSE(c.model_overrides.router_aux_loss_coef);
  c = parse(std::string(kMinimal) +
            "overrides_of_model_config:\n  output_router_logits: true\n"
            "  router_aux_loss_coef: 0.02\n");
  EXPECT_EQ(c.model_overrides.output_router_logits, true);
  EXPECT_EQ(c.model_overrides.router_aux_loss_coef, 0.02);
  EXPECT_EQ(c.where("overrides_of_model_config.router_aux_loss_coef"), "configs/x.yaml:9");
  TrainConfig back = config::parse_config(config::to_yaml(c), "run/config.yaml");
  EXPECT_EQ(back.model_overrides.output_router_logits, true);
  EXPECT_EQ(back.model_overrides.router_aux_loss_coef, 0.02);
  c = parse(std::string(kMinimal) + "model_config:\n  output_router_logits: false\n",
            {"overrides_of_model_config.router_aux_loss_coef=0.1"});
  EXPECT_EQ(c.model_overrides.output_router_logits, false);
  EXPECT_EQ(c.model_overrides.router_aux_loss_coef, 0.1);
  c = parse(kMinimal, {"overrides_of_model_config.output_router_logits=yes"});
  EXPECT_EQ(c.model_overrides.output_router_logits, true);
  EXPECT_EQ(error_of(std::string(kMinimal) + "overrides_of_model_config:\n  rope_theta: 1\n"),
            "configs/x.yaml:8: unknown key \"overrides_of_model_config.rope_theta\"");
  EXPECT_EQ(error_of(kMinimal, {"overrides_of_model_config.router_aux_loss_coef=-1"}),
            "--set overrides_of_model_config.router_aux_loss_coef=-1: overrides_of_model_config.router_aux_loss_coef: "
            "expected a non-negative number, got -1");
  EXPECT_EQ(error_of(kMinimal, {"overrides_of_model_config.output_router_logit=true"}),
            "--set overrides_of_model_config.output_router_logit=true: unknown key "
            "\"overrides_of_model_config.output_router_logit\" (did you mean "
            "\"overrides_of_model_config.output_router_logits\"?)");
  EXPECT_EQ(error_of(kMinimal, {"overrides_of_model_config=3"}),
            "--set overrides_of_model_config=3: overrides_of_model_config: expected a mapping (output_router_logits, "
            "router_aux_loss_coef), got 3");
}

// The resolved config lists every key with its effective value and reads back to the same config.
TEST(Config, ResolvedYamlRoundTrip) {
  TrainConfig c = parse(std::string(kMinimal) + R"(lora_alpha: 16.5
learning_rate: 0.0002
warmup_ratio: 0.03
optimizer: paged_adamw_8bit
chat_template: "123"
test_datasets:
  - path: v.jsonl
    type: text
    field: "true"
)");
  const std::string y = config::to_yaml(c);
  for (const char* key : {"base_model:",
                          "tokenizer:",
                          "adapter: qlora",
                          "load_in_4bit: true",
                          "quantization:",
                          "  quant_type: nf4",
                          "  double_quant: true",
                          "  blocksize: 64",
                          "  compute_dtype: auto",
                          "lora_r: 8",
                          "lora_alpha: 16.5",
                          "lora_dropout: 0.05",
                          "lora_target_modules: [q_proj, v_proj]",
                          "lora_target_linear: false",
                          "use_rslora: false",
                          "sequence_len: 2048",
                          "sample_packing: false",
                          "train_on_inputs: false",
                          "skip_invalid: false",
                          "chat_template: \"123\"",
                          "datasets:",
                          "test_datasets:",
                          "    field: \"true\"",
                          "val_set_size: 0",
                          "micro_batch_size: 1",
                          "gradient_accumulation_steps: 1",
                          "num_epochs: ~",
                          "max_steps: 10",
                          "optimizer: paged_adamw_8bit",
                          "optimizer_device_budget: auto",
                          "learning_rate: 0.0002",
                          "lr_scheduler: cosine",
                          "warmup_steps: 0",
                          "warmup_ratio: 0.03",
                          "weight_decay: 0",
                          "max_grad_norm: 1",
                          "adam_beta1: 0.9",
                          "adam_beta2: 0.999",
                          "adam_epsilon: 1e-08",
                          "gradient_checkpointing: false",
                          "seed: 42",
                          "device: auto",
                          "max_nonfinite_steps: 10",
                          "output_dir:",
                          "save_steps: 0",
                          "save_total_limit: 0",
                          "eval_steps: 0",
                          "logging_steps: 1"})
    EXPECT_NE(("\n" + y).find(std::string("\n") + key), std::string::npos) << key << " missing in:\n" << y;
  EXPECT_EQ(y.find("bnb_4bit"), std::string::npos) << "aliases are not written";
  TrainConfig back = config::parse_config(y, "run/config.yaml");
  EXPECT_TRUE(config::diff_configs(c, back).empty());
  EXPECT_EQ(config::to_yaml(back), y);
  EXPECT_EQ(back.data.chat_template, "123");
  EXPECT_EQ(back.data.test_datasets.at(0).field, "true");
}

TEST(Config, DiffClassifiesChanges) {
  TrainConfig a = parse(kMinimal);
  auto diff = [&](const std::vector<std::string>& sets) { return config::diff_configs(a, parse(kMinimal, sets)); };
  auto one = [&](const std::vector<std::string>& sets, const std::string& key, config::ChangeKind kind,
                 const std::string& before, const std::string& after) {
    auto d = diff(sets);
    ASSERT_EQ(d.size(), 1u) << sets.front();
    EXPECT_EQ(d[0].key, key);
    EXPECT_EQ(config::change_kind_name(d[0].kind), std::string(config::change_kind_name(kind))) << key;
    EXPECT_EQ(d[0].before, before);
    EXPECT_EQ(d[0].after, after);
  };
  EXPECT_TRUE(diff({}).empty());
  one({"logging_steps=10"}, "logging_steps", config::ChangeKind::Harmless, "1", "10");
  one({"save_steps=50"}, "save_steps", config::ChangeKind::Harmless, "0", "50");
  one({"device=cpu"}, "device", config::ChangeKind::Harmless, "auto", "cpu");
  one({"optimizer=paged_adamw"}, "optimizer", config::ChangeKind::Harmless, "adamw", "paged_adamw");
  one({"optimizer_device_budget=1GB"}, "optimizer_device_budget", config::ChangeKind::Harmless, "auto", "1GB");
  // The prepared-data cache holds what the run would prepare anyway: moving it changes nothing.
  one({"dataset_prepared_path=prep"}, "dataset_prepared_path", config::ChangeKind::Harmless, "\"\"", abs_path("prep"));
  one({"max_steps=20"}, "max_steps", config::ChangeKind::Schedule, "10", "20");
  one({"lora_r=4"}, "lora_r", config::ChangeKind::Incompatible, "8", "4");
  one({"optimizer=adamw_8bit"}, "optimizer", config::ChangeKind::Incompatible, "adamw", "adamw_8bit");
  one({"quantization.blocksize=128"}, "quantization.blocksize", config::ChangeKind::Incompatible, "64", "128");
  one({"datasets.0.type=text"}, "datasets.0.type", config::ChangeKind::Incompatible, "alpaca", "text");
  auto d = diff({"datasets.1.path=b.jsonl"});
  ASSERT_FALSE(d.empty());
  EXPECT_EQ(d[0].key, "datasets.1.path");
  EXPECT_EQ(d[0].before, "(absent)");
  EXPECT_EQ(d[0].kind, config::ChangeKind::Incompatible);
  d = diff({"max_steps=null", "num_epochs=1"});
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].key, "num_epochs");
  EXPECT_EQ(d[0].before, "~");
  EXPECT_EQ(d[0].kind, config::ChangeKind::Schedule);
}

TEST(Config, LoadFromFile) {
  const stdfs::path dir = test::temp_dir();
  const stdfs::path p = dir / "c.yaml";
  fs::write_file_atomic(p, std::string(kMinimal) + "lora_r: x\n");
  try {
    config::load_config(p.string());
    ADD_FAILURE() << "no error";
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()), p.string() + ":7: lora_r: expected a positive integer, got \"x\"");
  }
  fs::write_file_atomic(p, kMinimal);
  EXPECT_EQ(config::load_config(p.string(), {"lora_r=4"}).lora.r, 4);
  EXPECT_THROW(config::load_config((dir / "missing.yaml").string()), UserError);
}

// Every config shipped in configs/ parses (the real-model ones name model directories the user
// downloads; parsing does not need them) and says what its comments promise.
TEST(Config, ShippedConfigsParse) {
  const stdfs::path dir = test::source_dir() / "configs";
  int n = 0;
  for (const auto& e : stdfs::directory_iterator(dir)) {
    if (e.path().extension() != ".yaml") continue;
    SCOPED_TRACE(e.path().string());
    TrainConfig c;
    ASSERT_NO_THROW(c = config::load_config(e.path().string()));
    EXPECT_TRUE(c.lora.target_linear) << "all-linear targets";
    ++n;
  }
  EXPECT_GE(n, 5);
  const TrainConfig demo = config::load_config((dir / "demo.yaml").string());
  const TrainConfig lora = config::load_config((dir / "demo-lora.yaml").string());
  EXPECT_EQ(demo.lora.adapter, "qlora");
  EXPECT_EQ(lora.lora.adapter, "lora");
  // The comparison run differs only in the adapter kind and where it writes (logging_dir follows
  // output_dir).
  for (const auto& ch : config::diff_configs(demo, lora))
    EXPECT_TRUE(ch.key == "adapter" || ch.key == "load_in_4bit" || ch.key == "output_dir" || ch.key == "logging_dir" ||
                ch.key.rfind("quantization.", 0) == 0)
        << ch.key;
  for (const char* name : {"llama-3.1-8b-qlora.yaml", "mistral-7b-qlora.yaml", "qwen2.5-7b-qlora.yaml"}) {
    const TrainConfig r = config::load_config((dir / name).string());
    EXPECT_EQ(r.lora.adapter, "qlora") << name;
    EXPECT_TRUE(r.gradient_checkpointing) << name;
    EXPECT_TRUE(r.data.sample_packing) << name;
    EXPECT_TRUE(r.optim.paged) << name;
  }
}

// Where each key came from, for messages of the layers that check the config later.
TEST(Config, OriginsNameFileLineOrOverride) {
  const TrainConfig c = parse(std::string(kMinimal) + "quantization:\n  blocksize: 128\nmemory_check: false\n",
                              {"lora_r=4", "datasets.0.type=text"});
  EXPECT_EQ(c.where("base_model"), "configs/x.yaml:1");
  EXPECT_EQ(c.where("lora_target_modules"), "configs/x.yaml:5");
  EXPECT_EQ(c.where("quantization.blocksize"), "configs/x.yaml:8");
  EXPECT_EQ(c.where("datasets.0.path"), "configs/x.yaml:3");
  EXPECT_EQ(c.where("datasets.0.type"), "--set datasets.0.type=text");
  EXPECT_EQ(c.where("lora_r"), "--set lora_r=4");
  EXPECT_EQ(c.where("sequence_len"), "configs/x.yaml");  // not set: the file
  EXPECT_FALSE(c.memory_check);
  EXPECT_TRUE(parse(kMinimal).memory_check);
  EXPECT_EQ(error_of(std::string(kMinimal) + "memory_check: maybe\n"),
            "configs/x.yaml:7: memory_check: expected true or false, got \"maybe\"");

  EXPECT_EQ(config::locate_message(c, "lora_target_modules: \"x\" matches no linear layer"),
            "configs/x.yaml:5: lora_target_modules: \"x\" matches no linear layer");
  EXPECT_EQ(config::locate_message(c, "sequence_len: expected at least 2, got 1"),
            "configs/x.yaml: sequence_len: expected at least 2, got 1");
  EXPECT_EQ(config::locate_message(c, "datasets.0.type: bad"), "--set datasets.0.type=text: datasets.0.type: bad");
  EXPECT_EQ(config::locate_message(c, "chat_template line 1: unexpected end"),
            "configs/x.yaml: chat_template line 1: unexpected end");
  // not a key: a file name, a path, an unknown word
  for (const char* m :
       {"tokenizer.json: not valid JSON", "/m/config.json: vocab_size: missing", "data cursor: x", "lora_r", ""})
    EXPECT_EQ(config::locate_message(c, m), m);
}

TEST(Config, InitLoraWeightsAsPeftSpellsThem) {
  const std::string m = kMinimal;  // 6 lines: the key under test is on line 7
  EXPECT_EQ(parse(m).lora.init_lora_weights, "true");
  EXPECT_EQ(parse(m + "init_lora_weights: false\n").lora.init_lora_weights, "false");
  EXPECT_EQ(parse(m + "init_lora_weights: PiSSA\n").lora.init_lora_weights, "pissa");
  EXPECT_EQ(parse(m + "init_lora_weights: pissa_niter_16\n").lora.init_lora_weights, "pissa_niter_16");
  EXPECT_EQ(parse(m + "init_lora_weights: olora\n").lora.init_lora_weights, "olora");
  EXPECT_EQ(parse(m + "init_lora_weights: gaussian\n").lora.init_lora_weights, "gaussian");
  EXPECT_EQ(error_of(m + "init_lora_weights: pissa_niter_x\n")
                .rfind("configs/x.yaml:7: init_lora_weights: expected true, "
                       "false, gaussian, pissa, pissa_niter_K",
                       0),
            0u);
  EXPECT_NE(error_of(m + "init_lora_weights: corda\n").find("\"corda\" initialization is not supported"),
            std::string::npos);
  // loftq_config selects LoftQ, at the top level or under peft: as Axolotl nests it.
  const TrainConfig l = parse(m + "loftq_config:\n  loftq_bits: 4\n  loftq_iter: 3\n");
  EXPECT_EQ(l.lora.init_lora_weights, "loftq");
  EXPECT_EQ(l.lora.loftq_iter, 3);
  const TrainConfig a = parse(m + "peft:\n  loftq_config:\n    loftq_bits: 4\n");
  EXPECT_EQ(a.lora.init_lora_weights, "loftq");
  EXPECT_EQ(a.lora.loftq_iter, 1);
  EXPECT_EQ(error_of(m + "loftq_config:\n  loftq_bits: 8\n"),
            "configs/x.yaml:8: loftq_config.loftq_bits: expected 4 (the base is NF4; PEFT's 8-bit LoftQ pairs with an "
            "int8 base), got 8");
  EXPECT_EQ(error_of(m + "loftq_config:\n  loftq_iters: 2\n"),
            "configs/x.yaml:8: loftq_config.loftq_iters: unknown key (expected loftq_bits or loftq_iter)");
  EXPECT_EQ(error_of(m + "init_lora_weights: pissa\nloftq_config:\n  loftq_iter: 2\n"),
            "configs/x.yaml:8: loftq_config: set with init_lora_weights: pissa (loftq_config configures "
            "init_lora_weights: loftq)");
  // The resolved config reads back to the same settings.
  const TrainConfig back = parse(config::to_yaml(l));
  EXPECT_EQ(back.lora.init_lora_weights, "loftq");
  EXPECT_EQ(back.lora.loftq_iter, 3);
  EXPECT_EQ(parse(config::to_yaml(parse(m + "init_lora_weights: pissa_niter_4\n"))).lora.init_lora_weights,
            "pissa_niter_4");
}

TEST(Config, UseDora) {
  const std::string m = kMinimal;
  EXPECT_FALSE(parse(m).lora.use_dora);
  EXPECT_TRUE(parse(m + "use_dora: true\n").lora.use_dora);
  EXPECT_TRUE(parse(m + "peft_use_dora: true\n").lora.use_dora);  // Axolotl's spelling
  EXPECT_TRUE(parse(config::to_yaml(parse(m + "use_dora: true\n"))).lora.use_dora);
  EXPECT_EQ(error_of(m + "use_dora: 2\n"), "configs/x.yaml:7: use_dora: expected true or false, got 2");
  EXPECT_EQ(error_of(m + "use_dora: true\nlora_dropout: 0\nlora_target_parameters: [experts.down_proj]\n"),
            "configs/x.yaml:7: use_dora: true with lora_target_parameters (PEFT has no DoRA for expert tensors)");
}

TEST(Config, LoraPlus) {
  const std::string m = kMinimal;
  EXPECT_FALSE(parse(m).optim.loraplus_lr_ratio);
  const TrainConfig c = parse(m + "loraplus_lr_ratio: 16\nloraplus_weight_decay: 0.01\nloraplus_lr_embedding: 1e-6\n");
  EXPECT_EQ(*c.optim.loraplus_lr_ratio, 16.0);
  EXPECT_EQ(c.optim.loraplus_weight_decay, 0.01);
  EXPECT_EQ(*parse(config::to_yaml(c)).optim.loraplus_lr_ratio, 16.0);
  EXPECT_EQ(error_of(m + "loraplus_lr_ratio: 0\n"),
            "configs/x.yaml:7: loraplus_lr_ratio: expected a positive number (LoRA+: lora_B's learning rate over "
            "lora_A's), got 0");
}
