mod job;
mod layer_choice;
mod trainer;
