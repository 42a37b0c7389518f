#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqtt_lb_fuzz::connect(data));
