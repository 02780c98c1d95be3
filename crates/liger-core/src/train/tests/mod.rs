mod job;
mod trainer;
