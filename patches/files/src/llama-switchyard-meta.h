#pragma once

// Graph metadata that is resident only where a graph writes it.
//
// llama.cpp sizes each kept graph's metadata (llm_graph_result::buf_compute_meta: the tensor
// headers and node lists) by the context's node budget, and a std::vector<uint8_t> zero-fills
// it, so every budgeted node costs resident memory in each of the three kept graphs whether a
// graph builds it or not. A bundle's budget leaves room for its deltas' products in the
// largest batch it can see (every expert at once), which most graphs never build. ggml writes
// the metadata before reading it (ggml_init and ggml_new_graph_custom initialise what they
// use), so the buffer need not start zeroed, and pages nothing writes stay unmapped.

#include <cstddef>
#include <memory>
#include <new>
#include <utility>
#include <vector>

// An allocator whose value-less construct default-initialises: resize() leaves bytes unwritten.
template <typename T>
struct llama_switchyard_default_init_allocator {
    using value_type = T;

    llama_switchyard_default_init_allocator() = default;
    template <typename U>
    llama_switchyard_default_init_allocator(const llama_switchyard_default_init_allocator<U> &) noexcept {}

    T * allocate(std::size_t n) { return std::allocator<T>().allocate(n); }
    void deallocate(T * p, std::size_t n) noexcept { std::allocator<T>().deallocate(p, n); }

    template <typename U>
    void construct(U * p) noexcept {
        ::new (static_cast<void *>(p)) U;
    }
    template <typename U, typename... Args>
    void construct(U * p, Args &&... args) {
        ::new (static_cast<void *>(p)) U(std::forward<Args>(args)...);
    }

    template <typename U>
    bool operator==(const llama_switchyard_default_init_allocator<U> &) const noexcept { return true; }
    template <typename U>
    bool operator!=(const llama_switchyard_default_init_allocator<U> &) const noexcept { return false; }
};

using llama_switchyard_meta_buffer = std::vector<uint8_t, llama_switchyard_default_init_allocator<uint8_t>>;
