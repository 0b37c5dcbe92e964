// Fixture for the "layering" test: a model/ header that reaches up into train/, which the
// layering check (cmake/check_layer.cmake) must refuse. Never compiled.
#pragma once
#include "kernels/ops.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/model.h"
#include "trainer/train/trainer.h"
