#![no_main]

// Counts heap bytes so that `gatehouse::fuzzing` can assert its allocation bound.
#[global_allocator]
static ALLOC: gatehouse::fuzzing::CountingAlloc = gatehouse::fuzzing::CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse::fuzzing::ws_frames(data));
