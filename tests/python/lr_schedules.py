"""Learning rates from transformers' schedules (get_scheduler + torch LambdaLR), one line per case:
  <kind> <learning_rate> <warmup_steps> <total_steps> <lr_0> ... <lr_total>
lr_k is the rate the optimizer uses for its k-th step (k = 0 first), printed with repr (exact).
Then warmup-ratio lines:  ratio <warmup_ratio> <total_steps> <warmup_steps>
(TrainingArguments.get_warmup_steps with warmup_steps < 1 read as a ratio, as transformers 5 does)."""
import types

import torch
from transformers import TrainingArguments
from transformers.optimization import get_scheduler

cases = [("cosine", 2e-4, 0, 10), ("cosine", 2e-4, 3, 17), ("cosine", 1e-3, 10, 10), ("linear", 3e-4, 0, 9),
         ("linear", 3e-4, 4, 25), ("constant", 5e-5, 0, 6), ("constant", 5e-5, 7, 12), ("cosine", 1e-4, 1, 1000)]
for kind, lr, warmup, total in cases:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    name = "constant_with_warmup" if kind == "constant" else kind
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total)
    lrs = []
    for _ in range(total + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    print(kind, repr(lr), warmup, total, " ".join(repr(x) for x in lrs))

for ratio, total in [(0.03, 1000), (0.1, 17), (0.05, 7), (0.5, 3), (0.0, 10)]:
    fake = types.SimpleNamespace(warmup_steps=ratio)
    print("ratio", repr(ratio), total, TrainingArguments.get_warmup_steps(fake, total))
