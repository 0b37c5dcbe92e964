// Fixture for the "layering" test: includes that model/ may make. Never compiled.
#include "trainer/io/peft.h"  // a; comment with a semicolon
#include "trainer/model/model.h"
