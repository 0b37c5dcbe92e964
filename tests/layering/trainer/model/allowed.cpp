// Fixture for the "layering" test: includes that model/ may make. Never compiled.
#include "trainer/model/model.h"
#include "trainer/io/peft.h"  // a; comment with a semicolon
