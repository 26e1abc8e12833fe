// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @notice Emits an ERC-721-shaped Transfer (three indexed arguments: four topics), which a
/// deposit watcher must not take for an ERC-20 transfer even from an allow-listed contract.
contract NftLike {
    event Transfer(address indexed from, address indexed to, uint256 indexed tokenId);

    function mint(address to, uint256 tokenId) external {
        emit Transfer(address(0), to, tokenId);
    }
}
