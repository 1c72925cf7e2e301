// Umbrella header for ackpt.
#pragma once

#include "ackpt/checkpointer.h"
#include "ackpt/env.h"
#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "ackpt/format.h"
#include "ackpt/state_dict.h"
